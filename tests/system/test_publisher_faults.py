"""Publisher faults against the real mosquitto: a full spool disk, a stop during an outage,
an unreachable broker, crafted spool files, stale retained state and a client-id clash."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from daemon.capture.frame import FrameMeta
from daemon.capture.state import CameraState
from daemon.config.model import MqttConfig, QueueConfig, TlsConfig
from daemon.config.secrets import Secret
from daemon.postprocess.yolo import Detections
from daemon.publish.message import OutMessage
from daemon.publish.mqtt import MqttPublisher
from daemon.publish.spool import DB_NAME
from tests.fixtures.broker import Received, Subscriber
from tests.harness.broker import Mosquitto, free_port

pytestmark = pytest.mark.mqtt

NODE = "node1"
BASE = f"edgewatch/{NODE}"
TOPIC = f"{BASE}/cam1/detections"


def _dets(n: int) -> Detections:
    boxes = np.tile(np.array([[10.0, 20.0, 110.0, 220.0]], np.float32), (n, 1))
    return Detections(boxes, np.full(n, 0.5, np.float32), np.zeros(n, np.int64))


def _publish(pub: MqttPublisher, seq: int, boxes: int = 2) -> None:
    now = time.time()
    pub.publish_detections(FrameMeta("cam1", seq, now, 640, 480), _dets(boxes), ["person"], now)


def _seqs(messages: list[Received]) -> list[int]:
    return [int(json.loads(m.payload)["seq"]) for m in messages if m.topic == TOPIC]


def _wait(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def _error_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.ERROR
    ]


def test_full_spool_disk_degrades_to_memory_once_and_keeps_publishing(
    tmp_path: Path, tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Mosquitto(workdir=tmp_path / "broker")
    config = MqttConfig(
        port=broker.port,
        queue=QueueConfig(max_memory_messages=100, spool_dir=tiny_disk / "spool", spool_max_mb=16),
    )
    pub = MqttPublisher(config, NODE)
    pub.start()
    total = 3000  # ~250 B each: ~750 kB offered to a 64 KiB disk
    try:
        for seq in range(total):
            _publish(pub, seq)
            if seq % 100 == 99:
                time.sleep(0.02)  # let the pump spill, so the disk (not memory) is what fills
        _wait(lambda: pub.counters().queued + pub.counters().dropped_overflow == total)
        errors = _error_lines(caplog, "daemon.publish.outbox")
        assert len(errors) == 1, f"one error line, not one per batch: {errors[:3]}..."
        full = pub.counters()
        assert full.spool.value == "memory-only"
        assert full.pump_ok
        broker.start()
        with Subscriber(broker, (f"{BASE}/#",)) as sub:
            _wait(lambda: pub.counters().queued == 0 and pub.counters().inflight == 0, 30)
            _publish(pub, total)  # and publishing goes on afterwards
            sub.wait_for(lambda ms: total in _seqs(ms))
            received = sub.messages(TOPIC)
        after = pub.counters()
    finally:
        pub.stop(timeout=3)
        broker.close()
    assert all(json.loads(m.payload)["camera"] == "cam1" for m in received), "no torn payload"
    assert after.pump_ok
    assert after.spool.value == "ok", "the replayed spool made room: the disk is used again"
    delivered = set(_seqs(received))
    assert len(delivered) == total + 1 - after.dropped_overflow, "all that was not counted dropped"
    assert full.spooled > 0
    assert full.dropped_overflow > 0


def test_stop_during_outage_persists_the_unacknowledged_window(tmp_path: Path) -> None:
    broker = Mosquitto(workdir=tmp_path / "broker").start()
    config = MqttConfig(
        port=broker.port,
        queue=QueueConfig(max_memory_messages=1000, spool_dir=tmp_path / "spool", spool_max_mb=4),
    )
    first = MqttPublisher(config, NODE)
    first.start()
    _wait(lambda: first.connected)
    pid = broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the broker hangs: messages go out and are never acknowledged
    try:
        for seq in range(100):
            _publish(first, seq)
        _wait(lambda: first.counters().inflight >= 64)
        first.stop(timeout=1)
    finally:
        os.kill(pid, signal.SIGCONT)
        broker.kill()
    broker.start()
    second = MqttPublisher(config, NODE)
    try:
        with Subscriber(broker, (TOPIC,)) as sub:
            second.start()
            sub.wait_for(lambda ms: set(_seqs(ms)) >= set(range(100)))
            seqs = _seqs(sub.messages())
    finally:
        second.stop(timeout=3)
        broker.close()
    first_seen = sorted(set(seqs), key=seqs.index)
    assert first_seen == list(range(100)), "in-flight first, in order, then the rest"


@pytest.mark.parametrize("fault", ["refused", "dns", "tls", "auth"])
def test_unreachable_broker_says_why_once(
    fault: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    broker: Mosquitto | None = None
    if fault == "refused":
        config = MqttConfig(port=free_port())
        expected = "connection refused"
    elif fault == "dns":
        config = MqttConfig(host="broker.invalid", port=1883)
        expected = "DNS lookup failed"
    elif fault == "tls":
        broker = Mosquitto(tls=True, workdir=tmp_path / "broker").start()
        config = MqttConfig(port=broker.port, tls=TlsConfig())  # system CAs: self-signed fails
        expected = "TLS certificate rejected"
    else:
        broker = Mosquitto(username="edge", password="right", workdir=tmp_path / "broker").start()
        config = MqttConfig(port=broker.port, username="edge", password=Secret("wrong"))
        expected = "broker refused the connection"
    pub = MqttPublisher(config, NODE)
    pub.start()
    try:
        _wait(lambda: pub.counters().connect_failures >= 3, 30)
        counters = pub.counters()
        _publish(pub, 0)
    finally:
        pub.stop(timeout=1)
        if broker is not None:
            broker.close()
    causes = [str(getattr(r, "cause", "")) for r in caplog.records if hasattr(r, "cause")]
    assert len(causes) == 1, f"once per state change, not per retry: {causes}"
    paho = [r.getMessage() for r in caplog.records if r.name.startswith("daemon.publish.mqtt.paho")]
    assert not [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("daemon.publish.mqtt.paho")
    ], paho
    assert causes[0].startswith(expected)
    assert counters.broker.value in ("unreachable", "refused")
    assert (counters.broker_cause or "").startswith(expected)
    assert not counters.can_publish
    lost = [r for r in caplog.records if r.getMessage().startswith("mqtt publisher stopped")]
    assert lost[-1].levelno == logging.WARNING
    assert getattr(lost[-1], "lost", 0) == 1


def test_spool_replays_only_own_topics_from_a_private_folder(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_subscriber: Callable[..., Subscriber]
) -> None:
    rows = {
        "factory/doors/unlock": b"open",
        TOPIC: b'{"camera":"cam1","seq":0}',
        f"{BASE}/cam1/stats": b'{"camera":"cam1","seq":7}',  # damaged on disk below
    }
    # The same files in a folder others may write: refused as a whole.
    shared = tmp_path / "shared-spool"
    _craft_spool(shared, rows)
    shared.chmod(0o777)
    private = tmp_path / "spool"
    _craft_spool(private, rows)
    database = private / DB_NAME
    database.write_bytes(database.read_bytes().replace(b'"seq":7', b'"seq":8'))
    sub = mqtt_subscriber(("#",))
    for folder in (shared, private):
        config = MqttConfig(port=mosquitto.port, queue=QueueConfig(spool_dir=folder))
        pub = MqttPublisher(config, NODE)
        pub.start()
        try:
            if folder is private:
                sub.wait_for(lambda ms: 0 in _seqs(ms))
            _wait(lambda p=pub: p.connected)  # type: ignore[misc]
            _publish(pub, 1)
            runs = 2 if folder is private else 1
            sub.wait_for(lambda ms, n=runs: _seqs(ms).count(1) == n)  # type: ignore[misc]
            counters = pub.counters()
        finally:
            pub.stop(timeout=2)
        if folder is private:
            assert counters.spool_rejected == 2, "the foreign row and the damaged one"
    assert [m.topic for m in sub.messages() if m.topic.startswith("factory/")] == []
    assert [m.topic for m in sub.messages() if m.topic.endswith("/stats")] == []
    assert _seqs(sub.messages()) == [1, 0, 1], "the own row is replayed from the private folder"


def _craft_spool(folder: Path, rows: dict[str, bytes]) -> None:
    """Spool files written by someone else, with valid checksums: a SQLite spool, and a
    segment file of the format an older edgewatch wrote."""
    folder.mkdir(mode=0o700)
    with sqlite3.connect(folder / DB_NAME) as db:
        db.execute(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, topic BLOB NOT NULL,"
            " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,"
            " crc INTEGER NOT NULL)"
        )
        for topic, payload in rows.items():
            t = topic.encode()
            db.execute(
                "INSERT INTO messages (topic, payload, qos, retain, crc) VALUES (?, ?, 1, 0, ?)",
                (t, payload, zlib.crc32(payload, zlib.crc32(t))),
            )
    db.close()
    foreign, body = b"factory/doors/unlock", b"open"
    header = struct.pack("<IIH", len(body), zlib.crc32(body, zlib.crc32(foreign)), len(foreign))
    (folder / "seg-000000000000.spool").write_bytes(header + foreign + body)


def test_retained_state_follows_the_node(
    mosquitto: Mosquitto, mqtt_subscriber: Callable[..., Subscriber]
) -> None:
    first = MqttPublisher(MqttConfig(port=mosquitto.port), NODE)
    first.start()
    first_epoch = first.start_camera("cam1")
    first.start_camera("gone")
    first.publish_state("cam1", CameraState.STREAMING, None)
    first.publish_state("gone", CameraState.STREAMING, None)
    watcher = mqtt_subscriber((f"{BASE}/#",))
    watcher.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/state")]) >= 2)
    first.stop(timeout=3)
    # After a clean stop no camera claims to stream while the node is offline.
    late = mqtt_subscriber((f"{BASE}/#",))
    retained = {m.topic: m.payload for m in late.wait_for(lambda ms: len(ms) >= 3)}
    assert retained[f"{BASE}/status"] == b"offline"
    for cam in ("cam1", "gone"):
        state = json.loads(retained[f"{BASE}/{cam}/state"])
        assert (state["state"], state["reason"]) == ("down", "node stopped")
    assert json.loads(retained[f"{BASE}/cam1/state"])["epoch"] == first_epoch
    # The next start runs only cam1: the retained state of the removed camera is cleared.
    second = MqttPublisher(MqttConfig(port=mosquitto.port), NODE)
    assert second.start_camera("cam1") != first_epoch, "a restart starts a new epoch"
    second.start()
    try:
        second.publish_state("cam1", CameraState.STREAMING, None)
        watcher.wait_for(
            lambda ms: any(m.topic == f"{BASE}/gone/state" and not m.payload for m in ms)
        )
        after = mqtt_subscriber((f"{BASE}/+/state",))
        after.wait_for(lambda ms: len(ms) >= 1)
        time.sleep(0.3)  # any other retained state would have arrived with it
        assert [m.topic for m in after.messages()] == [f"{BASE}/cam1/state"]
    finally:
        second.stop(timeout=3)


def test_two_nodes_with_one_name_are_reported(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    boxes = [MqttPublisher(MqttConfig(port=mosquitto.port), NODE) for _ in range(2)]
    for box in boxes:
        box.start()
    try:
        _wait(lambda: any(b.counters().takeover_suspected for b in boxes), 40)
    finally:
        for box in boxes:
            box.stop(timeout=2)
    warnings = [r for r in caplog.records if "same client id" in r.getMessage()]
    assert warnings
    assert getattr(warnings[0], "client_id", None) == f"edgewatch-{NODE}"


def test_pump_failure_is_logged_and_the_pump_restarts(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    pub = MqttPublisher(MqttConfig(port=mosquitto.port), NODE)
    with Subscriber(mosquitto, (TOPIC,)) as sub:
        pub.start()
        try:
            _wait(lambda: pub.connected)
            # A message paho cannot take (a payload that is not bytes): the pump's round fails.
            pub._outbox.put(OutMessage(TOPIC, 12.5j))  # type: ignore[arg-type]
            _wait(lambda: any("pump failed" in r.getMessage() for r in caplog.records))
            _publish(pub, 1)
            sub.wait_for(lambda ms: _seqs(ms) == [1])
            _wait(lambda: pub.pump_ok)
        finally:
            pub.stop(timeout=2)
    failures = [r for r in caplog.records if "pump failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None, "with its traceback, through logging"
