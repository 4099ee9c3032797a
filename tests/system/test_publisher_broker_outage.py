"""Broker outages at the publisher lose nothing, and the queue bounds drop oldest first.

The outage lasts ``EDGEWATCH_OUTAGE_S`` seconds (default 5; ``EDGEWATCH_OUTAGE_S=30`` for a
30 s one). Proof of no loss: the producer numbers every message; the subscriber holds a
persistent session (clean_session=False, QoS 1) on a broker with persistence, so anything
the broker accepted reaches it even across the restart; and the set of received numbers
must equal every number produced, outage included.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from daemon.capture.frame import FrameMeta
from daemon.config.model import MqttConfig, QueueConfig
from daemon.postprocess.yolo import Detections
from daemon.publish.counters import PublisherCounters
from daemon.publish.mqtt import MqttPublisher
from daemon.publish.spool import DB_NAME
from tests.fixtures.broker import Received, Subscriber
from tests.harness.broker import Mosquitto

pytestmark = pytest.mark.mqtt

OUTAGE_S = float(os.environ.get("EDGEWATCH_OUTAGE_S", "5"))
RATE_HZ = 50.0
TOPIC = "edgewatch/node1/cam1/detections"


def _detections(n: int) -> Detections:
    boxes = np.tile(np.array([[10.0, 20.0, 110.0, 220.0]], np.float32), (n, 1))
    return Detections(boxes, np.full(n, 0.5, np.float32), np.zeros(n, np.int64))


def _publish(pub: MqttPublisher, seq: int, boxes: int = 2) -> None:
    now = time.time()
    pub.publish_detections(
        FrameMeta("cam1", seq, now, 640, 480), _detections(boxes), ["person"], now
    )


def _seqs(messages: list[Received]) -> list[int]:
    return [int(json.loads(m.payload)["seq"]) for m in messages if m.topic == TOPIC]


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def _down_broker_with_session(workdir: Path) -> Mosquitto:
    """A stopped broker that already holds a persistent session subscribed to ``TOPIC``.

    Whatever the publisher sends after the broker returns is queued for that session, so
    nothing depends on whether the checker or the publisher reconnects first.
    """
    broker = Mosquitto(persistence=True, workdir=workdir)
    broker.start()
    Subscriber(broker, (TOPIC,), client_id="checker", persistent=True).close()
    broker.stop()
    return broker


def _settled(pub: MqttPublisher, timeout: float = 10.0) -> PublisherCounters:
    """Counters once the pump has finished spilling (unchanged for half a second)."""
    deadline = time.monotonic() + timeout
    previous = pub.counters()
    while True:
        time.sleep(0.5)
        current = pub.counters()
        if current == previous:
            return current
        if time.monotonic() > deadline:
            raise TimeoutError("publisher counters did not settle")
        previous = current


def _checker(broker: Mosquitto) -> Subscriber:
    return Subscriber(broker, (TOPIC,), client_id="checker", persistent=True)


class _Producer(threading.Thread):
    """Numbered detections at a steady rate, like a camera, until stopped."""

    def __init__(self, pub: MqttPublisher) -> None:
        super().__init__(name="producer", daemon=True)
        self.pub = pub
        self.count = 0
        self.done = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.done.is_set():
            _publish(self.pub, self.count)
            self.count += 1
            self.done.wait(max(0.0, start + self.count / RATE_HZ - time.monotonic()))


def test_broker_outage_loses_nothing(tmp_path: Path) -> None:
    broker = Mosquitto(persistence=True, workdir=tmp_path / "broker")
    broker.start()
    spool_dir = tmp_path / "spool"
    # A small memory queue so the outage really goes through the disk spool.
    config = MqttConfig(
        port=broker.port,
        queue=QueueConfig(max_memory_messages=40, spool_dir=spool_dir, spool_max_mb=16),
    )
    sub = Subscriber(broker, (TOPIC,), client_id="outage-checker", persistent=True)
    pub = MqttPublisher(config, "node1")
    producer = _Producer(pub)
    try:
        pub.start()
        _wait(lambda: pub.connected, 10)
        producer.start()
        time.sleep(3.0)
        before = producer.count
        broker.stop()
        _wait(lambda: not pub.connected, 10)
        time.sleep(OUTAGE_S)
        during = producer.count - before
        peak = pub.counters()
        broker.start()
        time.sleep(3.0)
        producer.done.set()
        producer.join(5)
        total = producer.count
        sub.wait_for(lambda ms: len(set(_seqs(ms))) >= total, timeout=30 + OUTAGE_S)
        _wait(lambda: pub.counters().queued == 0 and pub.counters().inflight == 0, 10)
        received = _seqs(sub.messages())
        counters = pub.counters()
    finally:
        producer.done.set()
        pub.stop(timeout=3)
        sub.close()
        broker.close()

    assert during >= int(OUTAGE_S * RATE_HZ * 0.8), "the producer kept producing during the outage"
    assert peak.spooled > 0, "the outage backlog went through the disk spool"
    assert set(received) == set(range(total)), "every numbered message arrived"
    assert counters.dropped_overflow == 0
    assert counters.spool_bytes == 0, "the spool is empty once replayed"
    # Replay keeps order: the first arrival of each number is increasing.
    first: dict[int, int] = {}
    for i, seq in enumerate(received):
        first.setdefault(seq, i)
    assert sorted(first, key=first.__getitem__) == list(range(total))
    print(
        f"\noutage {OUTAGE_S:.0f}s: produced {total} ({during} during the outage), "
        f"received {len(received)} ({len(received) - total} duplicates), spooled {peak.spooled}, "
        f"peak queue {peak.queued}, peak spool {peak.spool_bytes} B"
    )


def test_a_second_outage_after_the_spool_was_replayed_loses_nothing(tmp_path: Path) -> None:
    broker = _down_broker_with_session(tmp_path / "broker")
    # Each outage queues fewer messages than memory holds (none dropped) but more than half
    # of it, so the pump spills them to the spool.
    per_outage, memory = 90, 100
    config = MqttConfig(
        port=broker.port,
        queue=QueueConfig(max_memory_messages=memory, spool_dir=tmp_path / "spool"),
    )
    pub = MqttPublisher(config, "node1")
    pub.start()
    spooled = 0
    try:
        for outage in range(2):
            if outage:
                broker.stop()
                _wait(lambda: not pub.connected, 10)
            expected = set(range(outage * per_outage, (outage + 1) * per_outage))
            for seq in sorted(expected):
                _publish(pub, seq)
            assert _settled(pub).spooled > spooled, "the backlog went to the spool"
            spooled = pub.counters().spooled
            broker.start()
            sub = _checker(broker)
            try:
                with contextlib.suppress(TimeoutError):
                    sub.wait_for(lambda ms, e=expected: set(_seqs(ms)) >= e, 20)  # type: ignore[misc]
                missing = expected - set(_seqs(sub.messages()))
                assert not missing, f"outage {outage + 1}: {len(missing)} messages never arrived"
                # The spool replayed and emptied before the next outage.
                _wait(lambda: pub.counters().spool_bytes == 0, 10)
            finally:
                sub.close()
        dropped = pub.counters().dropped_overflow
    finally:
        pub.stop(timeout=3)
        broker.close()
    assert dropped == 0


def test_memory_bound_drops_oldest_first(tmp_path: Path) -> None:
    broker = _down_broker_with_session(tmp_path / "broker")
    pub = MqttPublisher(
        MqttConfig(port=broker.port, queue=QueueConfig(max_memory_messages=100)), "node1"
    )
    pub.start()
    try:
        for seq in range(250):
            _publish(pub, seq)
        counters = pub.counters()
        assert (counters.queued, counters.dropped_overflow) == (100, 150)
        broker.start()
        with _checker(broker) as sub:
            sub.wait_for(lambda ms: len(ms) >= 100, timeout=20)
            time.sleep(0.3)
            assert _seqs(sub.messages()) == list(range(150, 250))
    finally:
        pub.stop(timeout=3)
        broker.close()


def test_spool_bound_drops_oldest_first(tmp_path: Path) -> None:
    broker = _down_broker_with_session(tmp_path / "broker")
    spool_dir = tmp_path / "spool"
    pub = MqttPublisher(
        MqttConfig(
            port=broker.port,
            queue=QueueConfig(max_memory_messages=1000, spool_dir=spool_dir, spool_max_mb=1),
        ),
        "node1",
    )
    pub.start()
    total = 3000  # ~1.3 kB each: about 4 MB offered to a 1 MB spool
    try:
        for seq in range(total):
            _publish(pub, seq, boxes=30)
            if seq % 200 == 199:
                time.sleep(0.05)  # let the pump spill: the memory bound must not be the one hit
        counters = _settled(pub)
        assert counters.dropped_overflow > 0
        assert counters.spool_bytes <= 1024 * 1024
        assert counters.queued + counters.dropped_overflow == total
        broker.start()
        with _checker(broker) as sub:
            sub.wait_for(lambda ms: len(ms) >= counters.queued, timeout=30)
            time.sleep(0.3)
            assert _seqs(sub.messages()) == list(range(counters.dropped_overflow, total))
    finally:
        pub.stop(timeout=3)
        broker.close()
    print(f"\nspool bound 1 MiB: kept {counters.queued}, dropped {counters.dropped_overflow}")


def test_spool_survives_a_daemon_restart(tmp_path: Path) -> None:
    broker = Mosquitto(workdir=tmp_path / "broker")
    config = MqttConfig(
        port=broker.port,
        queue=QueueConfig(max_memory_messages=1000, spool_dir=tmp_path / "spool", spool_max_mb=4),
    )
    first = MqttPublisher(config, "node1")
    first.start()
    for seq in range(120):
        _publish(first, seq)
    first.stop(timeout=1)  # broker still down: the memory queue goes to disk
    assert (tmp_path / "spool" / DB_NAME).is_file()
    broker.start()
    second = MqttPublisher(config, "node1")
    try:
        with Subscriber(broker, (TOPIC,)) as sub:
            second.start()
            sub.wait_for(lambda ms: len(ms) >= 120, timeout=20)
            assert _seqs(sub.messages()) == list(range(120))
    finally:
        second.stop(timeout=3)
        broker.close()


def test_unusable_spool_dir_degrades_to_memory_and_keeps_publishing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_dir = tmp_path / "spool"
    not_a_dir.write_text("a file where the spool folder should be")
    with Mosquitto(workdir=tmp_path / "broker") as broker, Subscriber(broker, (TOPIC,)) as sub:
        pub = MqttPublisher(
            MqttConfig(port=broker.port, queue=QueueConfig(spool_dir=not_a_dir)), "node1"
        )
        pub.start()
        try:
            for seq in range(20):
                _publish(pub, seq)
            sub.wait_for(lambda ms: len(_seqs(ms)) >= 20, timeout=20)
        finally:
            pub.stop(timeout=3)
    assert _seqs(sub.messages()) == list(range(20))
    assert any("spool unavailable" in r.getMessage() for r in caplog.records)
