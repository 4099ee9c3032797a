"""Monitoring: interval stats math, the Prometheus/healthz endpoint, sd_notify."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon.capture.state import CameraState, CaptureCounters
from daemon.monitor.metrics import DaemonMetrics, Health, MetricsServer
from daemon.monitor.stats import StatsCollector, render_fps_table
from daemon.monitor.systemd import SystemdNotifier
from daemon.publish.counters import PublisherCounters


def test_fps_drops_and_percentiles() -> None:
    stats = StatsCollector(window=1000)
    stats.add_camera("cam1", now=100.0)
    stats.add_camera("cam2", now=100.0)
    rng = np.random.default_rng(0)
    latencies = rng.uniform(0.01, 0.2, 40)
    for value in latencies:
        stats.record_processed("cam1", float(value))
    stats.record_processed("ghost", 1.0)  # not tracked: ignored
    counters = {"cam1": CaptureCounters(frames_read=50, frames_dropped=10, reconnects=1)}
    snap = stats.snapshot(102.0, counters, {"cam1": CameraState.STREAMING})

    cam1 = snap["cam1"]
    assert cam1.interval_s == pytest.approx(2.0)
    assert cam1.input_fps == pytest.approx(25.0)
    assert cam1.processed_fps == pytest.approx(20.0)
    assert (cam1.dropped, cam1.dropped_total, cam1.reconnects_total) == (10, 10, 1)
    assert cam1.latency_p50_s == pytest.approx(float(np.percentile(latencies, 50)))
    assert cam1.latency_p95_s == pytest.approx(float(np.percentile(latencies, 95)))
    assert cam1.state is CameraState.STREAMING
    # A camera with nothing yet: zero rates, no latency, state defaults to starting.
    cam2 = snap["cam2"]
    assert (cam2.input_fps, cam2.processed_fps, cam2.latency_p50_s) == (0.0, 0.0, None)
    assert cam2.state is CameraState.STARTING
    assert "ghost" not in snap

    # Second interval: deltas, not totals.
    for _ in range(5):
        stats.record_processed("cam1", 0.05)
    counters = {"cam1": CaptureCounters(frames_read=60, frames_dropped=12)}
    cam1 = stats.snapshot(103.0, counters, {})["cam1"]
    assert cam1.input_fps == pytest.approx(10.0)
    assert cam1.processed_fps == pytest.approx(5.0)
    assert (cam1.dropped, cam1.dropped_total, cam1.processed_total) == (2, 12, 45)
    assert cam1.latency_p95_s == pytest.approx(0.05)


def test_latency_window_is_bounded_to_most_recent() -> None:
    stats = StatsCollector(window=100)
    stats.add_camera("cam", now=0.0)
    for i in range(250):  # wraps the ring twice and a half
        stats.record_processed("cam", float(i))
    snap = stats.snapshot(1.0, {}, {})["cam"]
    recent = np.arange(150, 250, dtype=np.float64)
    assert snap.processed == 250
    assert snap.latency_p50_s == pytest.approx(float(np.percentile(recent, 50)))
    assert snap.latency_p95_s == pytest.approx(float(np.percentile(recent, 95)))


def test_hot_reload_add_remove_and_table() -> None:
    stats = StatsCollector()
    stats.add_camera("front-door", now=0.0)
    stats.add_camera("yard", now=0.0)
    stats.remove_camera("yard")
    stats.record_processed("yard", 0.1)
    snap = stats.snapshot(1.0, {"front-door": CaptureCounters(frames_read=12)}, {})
    assert set(snap) == {"front-door"}
    table = render_fps_table(snap)
    lines = table.splitlines()
    assert len(lines) == 3
    assert lines[2].split()[:3] == ["front-door", "starting", "12.0"]


@pytest.fixture
def server() -> Iterator[tuple[MetricsServer, DaemonMetrics, dict[str, bool]]]:
    health = {"ok": True}
    counters = PublisherCounters(True, 10, 9, 1, 4, 2, 3, 4096)
    metrics = DaemonMetrics(publisher=lambda: counters)
    srv = MetricsServer(
        "127.0.0.1",
        0,
        metrics.registry,
        lambda: Health(health["ok"], {"cameras": 1}),
    )
    srv.start()
    yield srv, metrics, health
    srv.stop()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_metrics_scrape_and_healthz(
    server: tuple[MetricsServer, DaemonMetrics, dict[str, bool]],
) -> None:
    srv, metrics, health = server
    assert srv.port > 0
    stats = StatsCollector()
    stats.add_camera("cam1", now=0.0)
    stats.record_processed("cam1", 0.08)
    snap = stats.snapshot(
        2.0,
        {"cam1": CaptureCounters(frames_read=30, frames_dropped=4)},
        {"cam1": CameraState.STREAMING},
    )
    metrics.update_cameras(snap)
    metrics.observe_inference(0.03, 4, None)
    metrics.observe_stage("decode_nms", 0.004)

    code, body = _get(srv.port, "/metrics")
    assert code == 200
    assert 'edgewatch_camera_input_fps{camera="cam1"} 15.0' in body
    assert 'edgewatch_camera_frames_dropped_total{camera="cam1"} 4.0' in body
    assert 'edgewatch_camera_streaming{camera="cam1"} 1.0' in body
    assert 'edgewatch_camera_latency_p95_seconds{camera="cam1"} 0.08' in body
    assert "edgewatch_backend_batch_latency_seconds_count 1.0" in body
    assert 'edgewatch_stage_seconds_count{stage="decode_nms"} 1.0' in body
    assert 'edgewatch_stage_seconds_sum{stage="decode_nms"} 0.004' in body
    # Every stage is exported from the start, so a rate over a window never lacks a series.
    assert 'edgewatch_stage_seconds_count{stage="frame_wait"} 0.0' in body
    assert "edgewatch_mqtt_queue_depth 4.0" in body
    assert "edgewatch_mqtt_dropped_total 2.0" in body
    # Only the daemon's own registry: no default process/python collectors.
    assert "python_gc" not in body

    # A camera removed by hot reload disappears from the next scrape.
    metrics.update_cameras({})
    assert 'camera="cam1"' not in _get(srv.port, "/metrics")[1]

    code, body = _get(srv.port, "/healthz")
    assert (code, json.loads(body)) == (200, {"status": "ok", "cameras": 1})
    health["ok"] = False
    code, body = _get(srv.port, "/healthz")
    assert (code, json.loads(body)["status"]) == (503, "unhealthy")
    assert _get(srv.port, "/nope")[0] == 404


def test_metrics_server_stops_and_frees_port() -> None:
    metrics = DaemonMetrics()
    srv = MetricsServer("127.0.0.1", 0, metrics.registry, lambda: Health(True))
    srv.start()
    port = srv.port
    srv.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_over_real_socket(tmp_path: Path, abstract: bool) -> None:
    if abstract:
        name = f"edgewatch-test-{uuid.uuid4().hex}"
        receiver, env = _receiver(b"\0" + name.encode()), {"NOTIFY_SOCKET": "@" + name}
    else:
        path = tmp_path / "notify.sock"
        receiver, env = _receiver(str(path)), {"NOTIFY_SOCKET": str(path)}
    notifier = SystemdNotifier(env)
    try:
        assert notifier.enabled
        assert notifier.ready()
        assert notifier.status("4 cameras\nstreaming")
        assert notifier.watchdog()
        assert notifier.stopping()
        got = [receiver.recv(256) for _ in range(4)]
        assert got == [b"READY=1", b"STATUS=4 cameras streaming", b"WATCHDOG=1", b"STOPPING=1"]
    finally:
        notifier.close()
        receiver.close()


def test_sd_notify_noop_and_watchdog_interval(tmp_path: Path) -> None:
    off = SystemdNotifier({})
    assert not off.enabled
    assert not off.ready()
    assert off.watchdog_interval() is None
    me = str(os.getpid())
    assert SystemdNotifier({"WATCHDOG_USEC": "20000000"}).watchdog_interval() == 20.0
    assert (
        SystemdNotifier({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": me}).watchdog_interval() == 3.0
    )
    assert (
        SystemdNotifier({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}).watchdog_interval()
        is None
    )
    assert SystemdNotifier({"WATCHDOG_USEC": "0"}).watchdog_interval() is None
    # A socket nobody listens on: a failed send is reported, never raised.
    gone = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert not gone.ready()
    gone.close()
