"""The whole daemon as a real process: 4 RTSP cameras on the real server, the real model,
the real broker. Detections and stats arrive for every camera with a valid schema, latency
is reported, killing one camera leaves the other three at their fps, SIGTERM exits 0 and
leaves ``offline`` retained."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import pytest

from daemon.publish.schemas import load_schema
from tests.fixtures.broker import Received, Subscriber
from tests.fixtures.observe import detection_counts, rates_over
from tests.harness.broker import Mosquitto, free_port
from tests.harness.daemon import DaemonProcess, daemon_config
from tests.harness.rtsp import RtspServer

pytestmark = [pytest.mark.rtsp, pytest.mark.mqtt]

PREFIX = "e2e"
NODE = "testnode"


@pytest.fixture
def daemon_process(
    rtsp_server: RtspServer,
    mosquitto: Mosquitto,
    model_onnx: Path,
    run_daemon: Callable[..., DaemonProcess],
) -> Iterator[tuple[subprocess.Popen[bytes], list[str], Path]]:
    cameras = {path: rtsp_server.url(path) for path in rtsp_server.paths[:4]}
    document = daemon_config(
        cameras,
        model_onnx,
        mqtt_port=mosquitto.port,
        metrics_port=free_port(),
        node=NODE,
        prefix=PREFIX,
        capture={"open_timeout_s": 5, "read_timeout_s": 3, "reconnect_max_s": 2},
    )
    daemon = run_daemon(document)
    try:
        yield daemon.proc, list(cameras), daemon.log_path
    finally:
        for path in rtsp_server.paths:
            if not rtsp_server.source_running(path):
                rtsp_server.start_source(path)


def _latest_state(sub: Subscriber, camera: str) -> str | None:
    states = sub.messages(f"{PREFIX}/{NODE}/{camera}/state")
    return json.loads(states[-1].payload)["state"] if states and states[-1].payload else None


def test_four_rtsp_cameras_end_to_end(
    daemon_process: tuple[subprocess.Popen[bytes], list[str], Path],
    rtsp_server: RtspServer,
    mqtt_subscriber: Callable[..., Subscriber],
) -> None:
    proc, cameras, log = daemon_process
    sub = mqtt_subscriber((f"{PREFIX}/#",))

    # Every camera delivers detections and stats (model load + RTSP connect within 60 s).
    def all_cameras_seen(_: list[Received]) -> bool:
        counts = detection_counts(sub, cameras)
        stats = {m.topic.split("/")[2] for m in sub.messages() if m.topic.endswith("/stats")}
        return all(counts[c] >= 3 for c in cameras) and set(cameras) <= stats

    try:
        sub.wait_for(all_cameras_seen, timeout=90)
    except TimeoutError:
        pytest.fail(f"not every camera delivered; daemon log:\n{log.read_text()[-3000:]}")
    assert proc.poll() is None

    schemas = {name: load_schema(name) for name in ("detections", "stats", "state")}
    for message in sub.messages():
        kind = message.topic.rsplit("/", 1)[-1]
        if kind in schemas and message.payload:
            jsonschema.validate(json.loads(message.payload), schemas[kind])
    latencies = [
        json.loads(m.payload)["latency_ms"]
        for m in sub.messages()
        if m.topic.endswith("/detections")
    ]
    assert all(0 < lat < 30_000 for lat in latencies)
    status = sub.messages(f"{PREFIX}/{NODE}/status")
    assert status
    assert status[-1].payload == b"online"

    # Kill one camera's stream: it goes reconnecting, the other three keep their fps.
    before = rates_over(sub, cameras, 10.0)
    dead, alive = cameras[0], cameras[1:]
    rtsp_server.stop_source(dead)
    sub.wait_for(lambda _: _latest_state(sub, dead) == "reconnecting", timeout=15)
    after = rates_over(sub, cameras, 10.0)
    for cid in alive:
        # Inference is shared, so with one camera fewer each other camera gets at least its
        # old share; the margin absorbs CPU noise on a busy 2-core machine.
        assert after[cid] >= 0.7 * before[cid], (cid, before, after)
    assert after[dead] < 0.5 * before[dead]

    rtsp_server.start_source(dead)
    sub.wait_for(lambda _: _latest_state(sub, dead) == "streaming", timeout=30)
    # Back at an equal share: the outage must not leave it taken at every other batch. Its
    # rate is compared with the others' in the same window, not with its own before the
    # outage, because what else runs on the machine changes the rate of every camera alike.
    time.sleep(2.0)
    revived = rates_over(sub, cameras, 10.0)
    print(f"rates before {before}, with {dead} down {after}, revived {revived}")
    assert revived[dead] >= 0.7 * statistics.median(revived[c] for c in alive), (before, revived)

    # Graceful stop: drain, publish offline (retained), exit 0.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    sub.wait_for(
        lambda _: (
            bool(sub.messages(f"{PREFIX}/{NODE}/status"))
            and sub.messages(f"{PREFIX}/{NODE}/status")[-1].payload == b"offline"
        ),
        timeout=10,
    )
    # The shutdown's final stats still carry the readers' counters (not zeros).
    for cid in alive:
        last = json.loads(sub.messages(f"{PREFIX}/{NODE}/{cid}/stats")[-1].payload)
        assert last["frames_read_total"] > 0, last
        assert last["state"] == "streaming", last
    text = log.read_text()
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if '"level": "error"' in line]
    assert not errors, errors
    assert "edgewatch stopped" in text
