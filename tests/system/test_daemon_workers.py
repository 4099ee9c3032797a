"""Cameras sharded across pipeline worker processes (``model.workers: 2``), whole daemon.

Real RTSP cameras, the real model, a real broker. The daemon must look like one process from
outside: every camera's detections on its usual topic, one epoch per camera shared by its
retained state and its detections, one ``/metrics`` with the workers' batch histograms
summed, one ``/healthz`` listing both workers. A worker killed with SIGKILL is not hidden:
``/healthz`` goes unhealthy and its cameras' retained state becomes ``down`` with the reason;
it is started again and its cameras resume with a new epoch. A worker that stops reporting
(SIGSTOP) is killed and restarted the same way. A reload that removes one camera
and adds another reaches the workers and leaves the other readers alone. SIGTERM stops everything
cleanly: exit 0, no worker or reader process left, every state ``down`` and the node offline.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.fixtures.broker import Subscriber
from tests.fixtures.observe import NODE, cheap_cameras, payloads
from tests.harness.daemon import DaemonProcess, write_config
from tests.harness.rtsp import RtspServer

pytestmark = [pytest.mark.rtsp, pytest.mark.mqtt]

PREFIX = "workers"
CAMERAS = ("c0", "c1", "c2")


def _last_state(sub: Subscriber, camera: str) -> dict[str, Any] | None:
    states = payloads(sub, "state", camera)
    return states[-1] if states else None


def _state_is(sub: Subscriber, camera: str, state: str) -> bool:
    return (_last_state(sub, camera) or {}).get("state") == state


def _epochs(sub: Subscriber, camera: str) -> set[int]:
    """The epochs of the camera's detections so far (empty before the first)."""
    return {p["epoch"] for p in payloads(sub, "detections", camera)}


def _processed(daemon: DaemonProcess, camera: str) -> bool:
    return bool(daemon.metric("edgewatch_camera_frames_processed_total", f'camera="{camera}"'))


def _new_epoch(sub: Subscriber, camera: str, old: set[int]) -> bool:
    return bool(_epochs(sub, camera) - old)


def test_workers_share_the_cameras_and_a_dead_worker_is_restarted(
    *,
    rtsp_server: RtspServer,
    videos: list[Path],
    daemon_document: Callable[..., dict[str, Any]],
    mqtt_subscriber: Callable[..., Subscriber],
    run_daemon: Callable[..., DaemonProcess],
) -> None:
    *paths, spare = cheap_cameras(rtsp_server, videos, len(CAMERAS) + 1)
    document = daemon_document(
        {cid: rtsp_server.url(p) for cid, p in zip(CAMERAS, paths, strict=True)}, PREFIX
    )
    document["model"]["workers"] = 2
    sub = mqtt_subscriber((f"{PREFIX}/#",))
    daemon = run_daemon(document)
    daemon.wait_streaming(CAMERAS)
    daemon.wait_until(lambda: daemon.healthz()["status"] == "ok", 60, "healthz ok")

    health = daemon.healthz()
    workers = health["workers"]
    assert [w["worker"] for w in workers] == [0, 1]
    assert all(w["healthy"] and w["alive"] for w in workers)
    assert sorted(c for w in workers for c in w["camera_ids"]) == list(CAMERAS)
    pids = {w["pid"] for w in workers}
    assert len(pids) == 2
    assert os.getpid() not in pids
    # Every line a worker logs says which worker it is.
    started = [r for r in daemon.log_records() if r.get("msg") == "pipeline worker started"]
    assert sorted(r["worker"] for r in started) == [0, 1]
    # Each worker runs its own cameras' readers.
    for w in workers:
        children = {c.pid for c in psutil.Process(w["pid"]).children()}
        assert {health["readers"][c] for c in w["camera_ids"]} <= children

    # Detections of every camera, carrying the epoch of the camera's retained state.
    for cid in CAMERAS:
        daemon.wait_until(partial(_new_epoch, sub, cid, set()), 30, f"{cid} detections")
        state = _last_state(sub, cid)
        assert state is not None
        assert state["state"] == "streaming"
        assert _epochs(sub, cid) == {state["epoch"]}
    # One /metrics: both workers' batches, and the service's publisher.
    daemon.wait_until(
        lambda: (daemon.metric("edgewatch_backend_batch_size_count") or 0) > 0, 10, "batches"
    )
    for cid in CAMERAS:
        daemon.wait_until(partial(_processed, daemon, cid), 10, f"{cid} in /metrics")
    assert (daemon.metric("edgewatch_mqtt_published_total") or 0) > 0

    # A worker dies: health says so, its cameras go down with the reason, it comes back.
    victim = workers[0]
    os.kill(victim["pid"], signal.SIGKILL)
    daemon.wait_until(lambda: daemon.http_get("/healthz")[0] == 503, 10, "unhealthy")
    # Its cameras are not shown streaming by a dead worker's last report.
    daemon.wait_until(
        lambda: all(
            daemon.healthz()["cameras"][c] in {"down", "starting"} for c in victim["camera_ids"]
        ),
        10,
        "dead worker's cameras not streaming",
    )
    for cid in victim["camera_ids"]:
        daemon.wait_until(partial(_state_is, sub, cid, "down"), 10, f"{cid} down")
        reason = (_last_state(sub, cid) or {}).get("reason") or ""
        assert "pipeline worker 0 exited" in reason
    old_epochs = {cid: _epochs(sub, cid) for cid in victim["camera_ids"]}
    daemon.wait_until(lambda: daemon.healthz()["status"] == "ok", 60, "healthy again")
    restarted = daemon.healthz()["workers"][0]
    assert restarted["pid"] != victim["pid"]
    assert restarted["restarts"] == 1
    for cid in victim["camera_ids"]:
        daemon.wait_until(partial(_new_epoch, sub, cid, old_epochs[cid]), 30, f"{cid} resumes")
    assert not psutil.pid_exists(victim["pid"]) or psutil.Process(victim["pid"]).status() == (
        psutil.STATUS_ZOMBIE
    )

    # A wedged worker (stopped: it neither works nor reports) goes unhealthy, then is killed
    # and restarted like a dead one.
    wedged = daemon.healthz()["workers"][1]
    assert wedged["restarts"] == 0
    os.kill(wedged["pid"], signal.SIGSTOP)
    daemon.wait_until(lambda: daemon.http_get("/healthz")[0] == 503, 20, "unhealthy when silent")
    daemon.wait_until(
        lambda: daemon.healthz()["workers"][1]["pid"] not in {None, wedged["pid"]}, 60, "killed"
    )
    for cid in wedged["camera_ids"]:
        reasons = [p.get("reason") or "" for p in payloads(sub, "state", cid)]
        assert any("pipeline worker 1 exited" in r and "without a report" in r for r in reasons)
    daemon.wait_until(lambda: daemon.healthz()["status"] == "ok", 60, "healthy after the kill")
    assert daemon.healthz()["workers"][1]["restarts"] == 1

    # A reload removes a camera and adds one: the workers are told, the rest keep running.
    document["cameras"] = [c for c in document["cameras"] if c["id"] != "c2"]
    document["cameras"].append({"id": "c3", "url": rtsp_server.url(spare)})
    readers = daemon.healthz()["readers"]
    write_config(daemon.config, document)
    daemon.reload()
    daemon.wait_streaming(["c0", "c1", "c3"])
    daemon.wait_until(lambda: set(daemon.healthz()["cameras"]) == {"c0", "c1", "c3"}, 10, "c2 gone")
    after = daemon.healthz()
    assert sorted(c for w in after["workers"] for c in w["camera_ids"]) == ["c0", "c1", "c3"]
    assert {c: after["readers"][c] for c in ("c0", "c1")} == {c: readers[c] for c in ("c0", "c1")}
    cleared = sub.messages(f"{PREFIX}/{NODE}/c2/state")
    daemon.wait_until(
        lambda: sub.messages(f"{PREFIX}/{NODE}/c2/state")[-1].payload == b"", 10, "c2 cleared"
    )
    assert cleared
    cameras = ("c0", "c1", "c3")

    # A clean stop: nothing left running, every camera down, the node offline.
    processes = [psutil.Process(w["pid"]) for w in daemon.healthz()["workers"]]
    processes += [p for w in processes for p in w.children(recursive=True)]
    assert daemon.stop() == 0
    _, alive = psutil.wait_procs(processes, timeout=5)
    assert alive == []
    for cid in cameras:
        assert _state_is(sub, cid, "down")
    status = sub.messages(f"{PREFIX}/{NODE}/status")
    assert status
    assert status[-1].payload == b"offline"
    # The errors are the killed workers'; nothing else failed on the way, stop included.
    errors = [r["msg"] for r in daemon.log_records() if r.get("level") == "error"]
    assert errors == [
        "pipeline worker exited; restarting it",
        "pipeline worker silent; killing it",
        "pipeline worker exited; restarting it",
    ]
    assert "Traceback" not in daemon.log_text()
