"""Publishing faults through the whole daemon (real cameras, model, mosquitto):

* a hot reload that restarts a camera keeps the documented de-duplication key
  ``(camera, epoch, seq)`` unique per frame, and the camera's totals keep counting;
* a broker outage with the spool on a full disk: ``/healthz`` says messages cannot leave
  and why, publishing resumes once the broker is back, and the daemon stops cleanly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from daemon.publish.schemas import load_schema
from tests.fixtures.broker import Subscriber
from tests.fixtures.observe import ObservedDaemon, cheap_cameras, payloads
from tests.harness.broker import Mosquitto, free_port
from tests.harness.daemon import DaemonProcess, daemon_config, write_config
from tests.harness.rtsp import RtspServer

pytestmark = [pytest.mark.rtsp, pytest.mark.mqtt]


def test_reload_keeps_the_dedup_key_unique_and_totals_counting(
    *,
    rtsp_server: RtspServer,
    videos: list[Path],
    observed_daemon: ObservedDaemon,
    daemon_document: Callable[..., dict[str, Any]],
) -> None:
    prefix = "dedup"
    url = rtsp_server.url(cheap_cameras(rtsp_server, videos, 1)[0])
    daemon, sub = observed_daemon({"cam": url}, prefix)
    daemon.wait_streaming(["cam"])
    sub.wait_for(lambda _: len(payloads(sub, "detections", "cam")) >= 20, timeout=60)
    first = len(payloads(sub, "detections", "cam"))
    changed = daemon_document(
        {"cam": {"url": url, "confidence": 0.3}}, prefix, metrics_port=daemon.metrics_port
    )
    write_config(daemon.config, changed)
    daemon.reload()
    # The new reader's frame numbers start again: wait until they overlap the old ones.
    sub.wait_for(lambda _: len(payloads(sub, "detections", "cam")) >= 2 * first + 10, timeout=60)
    time.sleep(2.5)  # another stats interval after the reload
    detections = payloads(sub, "detections", "cam")
    stats = payloads(sub, "stats", "cam")
    validator = jsonschema.Draft202012Validator(load_schema("detections"))
    for doc in detections:
        validator.validate(doc)
    frames: dict[tuple[Any, ...], set[float]] = {}
    for doc in detections:
        frames.setdefault((doc["camera"], doc.get("epoch"), doc["seq"]), set()).add(
            doc["capture_ts"]
        )
    clashes = {key: ts for key, ts in frames.items() if len(ts) > 1}
    assert not clashes, f"{len(clashes)} keys name different frames, e.g. {next(iter(clashes))}"
    assert len({doc["epoch"] for doc in detections}) == 2, "the reload started a new epoch"
    totals = [s["processed_total"] for s in stats]
    assert totals == sorted(totals), f"processed_total went back: {totals}"
    assert daemon.stop() == 0


def test_outage_on_a_full_spool_disk_is_reported_and_survived(
    tmp_path: Path,
    tiny_disk: Path,
    *,
    rtsp_server: RtspServer,
    videos: list[Path],
    run_daemon: Callable[..., DaemonProcess],
    model_onnx: Path,
) -> None:
    prefix = "fulldisk"
    cameras = cheap_cameras(rtsp_server, videos, 2)
    broker = Mosquitto(workdir=tmp_path / "mosquitto").start()
    checker = Subscriber(broker, (f"{prefix}/#",))
    try:
        daemon = run_daemon(
            daemon_config(
                {c: rtsp_server.url(c) for c in cameras},
                model_onnx,
                mqtt_port=broker.port,
                metrics_port=free_port(),
                prefix=prefix,
                mqtt={"queue": {"max_memory_messages": 40, "spool_dir": str(tiny_disk / "s")}},
            )
        )
        daemon.wait_streaming(cameras)
        checker.close()
        broker.stop()
        daemon.wait_until(
            lambda: daemon.healthz()["mqtt"]["broker"] != "connected", 15, "outage seen"
        )
        daemon.wait_until(
            lambda: daemon.healthz()["mqtt"]["spool"] == "memory-only", 60, "spool disk full"
        )
        status, body = daemon.http_get("/healthz")
        during = json.loads(body)
        spool_errors = [
            r
            for r in daemon.log_records()
            if r.get("msg", "").startswith("mqtt spool write failed")
        ]
        connected_gauge = daemon.metric("edgewatch_mqtt_broker_state", 'state="connected"')
        pump_gauge = daemon.metric("edgewatch_mqtt_pump_ok")
        broker.start()
        checker = Subscriber(broker, (f"{prefix}/#",))
        published = daemon.metric("edgewatch_mqtt_published_total") or 0.0
        daemon.wait_until(lambda: daemon.http_get("/healthz")[0] == 200, 30, "healthy again")
        checker.wait_for(lambda _: len(payloads(checker, "detections")) >= 20, timeout=30)
        after = daemon.metric("edgewatch_mqtt_published_total") or 0.0
        assert daemon.stop() == 0
    finally:
        checker.close()
        broker.close()
    assert status == 503
    assert (during["status"], during["mqtt"]["can_publish"]) == ("unhealthy", False)
    assert during["mqtt"]["broker"] in ("disconnected", "unreachable")
    assert during["mqtt"]["cause"].startswith(("connection lost", "connection refused"))
    assert (connected_gauge, pump_gauge) == (0.0, 1.0)
    assert after > published, "publishing resumed"
    assert all(isinstance(p["seq"], int) for p in payloads(checker, "detections"))
    assert len(spool_errors) == 1, "one error line for the full disk, not one per batch"
    assert "Traceback" not in daemon.log_text()
