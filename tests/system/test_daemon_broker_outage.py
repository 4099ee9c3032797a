"""A broker outage through the whole daemon loses no detection.

Real cameras, model and daemon; mosquitto (persistence on) is stopped for
``EDGEWATCH_OUTAGE_S`` seconds (8 by default, 30 s in the ``soak`` variant) while
detections flow, then started again on the same port.

Proof of no loss: the checker holds a persistent session (fixed client id,
``clean_session=False``, QoS 1) that the broker saves across its restart, so whatever the
broker accepted reaches it; the daemon's last stats message per camera carries
``processed_total``, the number of detection messages it queued for that camera; the
checker must hold exactly that many distinct ``(camera, seq)`` pairs. Duplicates are allowed
(at-least-once) and counted. The memory queue is kept tiny so the backlog really goes
through the disk spool.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.broker import Subscriber
from tests.fixtures.observe import NODE, cheap_cameras, payloads
from tests.harness.broker import Mosquitto, free_port
from tests.harness.daemon import DaemonProcess, daemon_config
from tests.harness.rtsp import RtspServer

pytestmark = [pytest.mark.rtsp, pytest.mark.mqtt]

PREFIX = "brokerout"
SHORT_OUTAGE_S = float(os.environ.get("EDGEWATCH_OUTAGE_S", "8"))
# Spill to disk once more than half of this is waiting in memory.
MEMORY_MESSAGES = 20


def _mqtt_metric(daemon: DaemonProcess, name: str) -> float:
    value = daemon.metric(name)
    assert value is not None, f"{name} missing from /metrics"
    return value


@pytest.mark.parametrize(
    "outage_s",
    [
        pytest.param(SHORT_OUTAGE_S, id="short"),
        pytest.param(30.0, id="30s", marks=pytest.mark.soak),
    ],
)
def test_broker_outage_loses_no_detection(
    outage_s: float,
    tmp_path: Path,
    *,
    rtsp_server: RtspServer,
    videos: list[Path],
    run_daemon: Callable[..., DaemonProcess],
    model_onnx: Path,
) -> None:
    cameras = cheap_cameras(rtsp_server, videos, 2)
    broker = Mosquitto(persistence=True, workdir=tmp_path / "mosquitto")
    broker.start()
    checker = Subscriber(broker, (f"{PREFIX}/#",), client_id="reliability-checker", persistent=True)
    try:
        daemon = run_daemon(
            daemon_config(
                {c: rtsp_server.url(c) for c in cameras},
                model_onnx,
                mqtt_port=broker.port,
                metrics_port=free_port(),
                prefix=PREFIX,
                mqtt={
                    "queue": {
                        "max_memory_messages": MEMORY_MESSAGES,
                        "spool_dir": str(tmp_path / "spool"),
                    }
                },
            )
        )
        daemon.wait_streaming(cameras)
        checker.wait_for(lambda _: len(payloads(checker, "detections")) >= 10, timeout=60)

        outage_started = time.time()
        broker.stop()
        daemon.wait_until(
            lambda: _mqtt_metric(daemon, "edgewatch_mqtt_connected") == 0, 15, "disconnected"
        )
        time.sleep(outage_s)
        peak_depth = _mqtt_metric(daemon, "edgewatch_mqtt_queue_depth")
        spooled = _mqtt_metric(daemon, "edgewatch_mqtt_spooled_total")
        broker.start()
        outage_ended = time.time()

        drain_s = daemon.wait_until(
            lambda: (
                _mqtt_metric(daemon, "edgewatch_mqtt_connected") == 1
                and _mqtt_metric(daemon, "edgewatch_mqtt_queue_depth") == 0
                and _mqtt_metric(daemon, "edgewatch_mqtt_inflight") == 0
            ),
            60,
            "backlog delivered",
        )
        dropped = _mqtt_metric(daemon, "edgewatch_mqtt_dropped_total")
        assert daemon.stop() == 0
        status = f"{PREFIX}/{NODE}/status"
        checker.wait_for(
            lambda _: any(m.payload == b"offline" for m in checker.messages(status)), timeout=15
        )
        time.sleep(1.0)  # anything still behind `offline` in the broker's queue
    finally:
        checker.close()
        broker.close()

    detections = payloads(checker, "detections")
    stats = payloads(checker, "stats")
    print(
        f"outage {outage_s:.0f} s: backlog peak {peak_depth:.0f} messages, {spooled:.0f} spooled "
        f"to disk, delivered {drain_s:.1f} s after the broker returned; "
        f"{len(detections)} detection messages received"
    )
    assert peak_depth > MEMORY_MESSAGES
    assert spooled > 0
    assert dropped == 0
    for cid in cameras:
        mine = [d for d in detections if d["camera"] == cid]
        seqs = {d["seq"] for d in mine}
        produced = max(s["processed_total"] for s in stats if s["camera"] == cid)
        in_outage = {d["seq"] for d in mine if outage_started <= d["publish_ts"] <= outage_ended}
        print(
            f"{cid}: published {produced}, received {len(mine)} ({len(seqs)} distinct, "
            f"{len(mine) - len(seqs)} duplicates), {len(in_outage)} produced during the outage"
        )
        assert len(in_outage) >= outage_s  # detections kept flowing (about 2+ fps each)
        assert len(seqs) == produced, f"{cid}: {produced - len(seqs)} detection messages lost"
    assert "Traceback" not in daemon.log_text()
