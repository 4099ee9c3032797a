"""Publish stage against the real mosquitto: payload schemas, retained state, last will,
credentials and TLS; plus the disk spool on its own."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from daemon.capture.frame import FrameMeta
from daemon.capture.state import CameraState, CaptureCounters
from daemon.config.model import MqttConfig, TlsConfig
from daemon.config.secrets import Secret
from daemon.monitor.stats import StatsCollector
from daemon.postprocess.yolo import Detections
from daemon.publish.camera_stats import CameraStats
from daemon.publish.mqtt import MqttPublisher
from daemon.publish.payloads import detections_payload, state_payload, stats_payload
from daemon.publish.schemas import SCHEMA_NAMES, load_schema
from daemon.publish.topics import Topics
from tests.fixtures.broker import Subscriber
from tests.fixtures.data import REPO
from tests.harness.broker import Mosquitto

pytestmark = pytest.mark.mqtt

NAMES = ["person", "bicycle", "car"]


def _detections() -> Detections:
    return Detections(
        np.array([[10.0, 20.0, 110.5, 220.25], [0.0, 0.0, 5.0, 5.0]], np.float32),
        np.array([0.91, 0.4], np.float32),
        np.array([0, 2], np.int64),
    )


def _stats() -> CameraStats:
    collector = StatsCollector()
    collector.add_camera("cam1", now=0.0)
    collector.record_processed("cam1", 0.12)
    counters = {"cam1": CaptureCounters(frames_read=50, frames_dropped=3)}
    return collector.snapshot(5.0, counters, {"cam1": CameraState.STREAMING})["cam1"]


def _validate(name: str, payload: bytes) -> None:
    document = payload.decode() if name == "status" else json.loads(payload)
    jsonschema.Draft202012Validator(load_schema(name)).validate(document)


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture
def publisher_factory() -> Iterator[Callable[..., MqttPublisher]]:
    made: list[MqttPublisher] = []

    def make(config: MqttConfig, node: str = "node1") -> MqttPublisher:
        pub = MqttPublisher(config, node)
        pub.start()
        made.append(pub)
        return pub

    yield make
    for pub in made:
        pub.stop(timeout=2)


def test_schemas_are_valid_and_payloads_conform() -> None:
    for name in SCHEMA_NAMES:
        jsonschema.Draft202012Validator.check_schema(load_schema(name))
    meta = FrameMeta("cam1", 7, 1000.0, 1280, 720)
    payload = detections_payload(meta, 1_700_000_000_000_000, _detections(), NAMES, 1000.25)
    _validate("detections", payload)
    doc = json.loads(payload)
    assert (doc["camera"], doc["epoch"], doc["seq"], doc["latency_ms"]) == (
        "cam1",
        1_700_000_000_000_000,
        7,
        250.0,
    )
    assert doc["detections"][1] == {
        "class_id": 2,
        "name": "car",
        "confidence": 0.4,
        "box": [0, 0, 5, 5],
    }
    _validate("state", state_payload("cam1", 1, CameraState.RECONNECTING, "read timeout", 1.0))
    _validate("stats", stats_payload(_stats(), 1))
    _validate("status", b"offline")
    # The schemas do reject bad documents.
    bad = dict(doc, seq=-1)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, load_schema("detections"))
    with pytest.raises(jsonschema.ValidationError):
        _validate("status", b"maybe")


def test_topics_reject_wildcards() -> None:
    topics = Topics("site/edgewatch", "box1")
    assert topics.detections("cam1") == "site/edgewatch/box1/cam1/detections"
    assert topics.status == "site/edgewatch/box1/status"
    for bad in ("a/b", "cam+", "#", ""):
        with pytest.raises(ValueError, match="topic level"):
            topics.state(bad)
    with pytest.raises(ValueError, match="node name"):
        Topics("edgewatch", "node#1")


def test_publish_all_topics_with_retained_state(
    mosquitto: Mosquitto,
    mqtt_subscriber: Callable[..., Subscriber],
    publisher_factory: Callable[..., MqttPublisher],
) -> None:
    sub = mqtt_subscriber(("edgewatch/#",))
    pub = publisher_factory(MqttConfig(port=mosquitto.port))
    topics = pub.topics
    pub.publish_state("cam1", CameraState.STREAMING, None)
    for seq in range(3):
        meta = FrameMeta("cam1", seq, time.time() - 0.05, 640, 480)
        pub.publish_detections(meta, _detections(), NAMES, time.time())
    pub.publish_stats("cam1", _stats())

    sub.wait_topic(topics.detections("cam1"), 3)
    sub.wait_topic(topics.stats("cam1"))
    sub.wait_topic(topics.state("cam1"))
    sub.wait_topic(topics.status)
    assert [json.loads(m.payload)["seq"] for m in sub.messages(topics.detections("cam1"))] == [
        0,
        1,
        2,
    ]
    for m in sub.messages(topics.detections("cam1")):
        _validate("detections", m.payload)
    _validate("stats", sub.messages(topics.stats("cam1"))[0].payload)
    _validate("state", sub.messages(topics.state("cam1"))[0].payload)
    assert sub.messages(topics.status)[0].payload == b"online"

    # A late subscriber gets state and availability from the broker's retained store.
    late = mqtt_subscriber(("edgewatch/#",))
    late.wait_topic(topics.state("cam1"))
    late.wait_topic(topics.status)
    retained = {m.topic: m for m in late.messages()}
    assert retained[topics.state("cam1")].retain
    assert json.loads(retained[topics.state("cam1")].payload)["state"] == "streaming"
    assert retained[topics.status].payload == b"online"
    assert topics.detections("cam1") not in retained

    # remove_camera clears the retained state; a clean stop says offline (retained).
    pub.remove_camera("cam1")
    sub.wait_for(lambda ms: any(m.topic == topics.state("cam1") and not m.payload for m in ms))
    pub.stop(timeout=5)
    sub.wait_for(lambda ms: any(m.topic == topics.status and m.payload == b"offline" for m in ms))
    after = mqtt_subscriber(("edgewatch/#",))
    after.wait_topic(topics.status)
    time.sleep(0.3)  # any other retained message would have arrived with the status
    assert [(m.topic, m.payload) for m in after.messages()] == [(topics.status, b"offline")]
    counters = pub.counters()
    assert counters.acknowledged == counters.published
    assert counters.dropped_overflow == 0


_CHILD = textwrap.dedent(
    """
    import sys, time
    from daemon.config.model import MqttConfig
    from daemon.publish.mqtt import MqttPublisher
    pub = MqttPublisher(MqttConfig(port=int(sys.argv[1])), "child")
    pub.start()
    while not pub.connected:
        time.sleep(0.02)
    print("connected", flush=True)
    time.sleep(60)
    """
)


def test_last_will_offline_when_publisher_is_killed(
    mosquitto: Mosquitto, mqtt_subscriber: Callable[..., Subscriber]
) -> None:
    sub = mqtt_subscriber(("edgewatch/child/status",))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(mosquitto.port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "connected"
        sub.wait_for(lambda ms: [m.payload for m in ms] == [b"online"])
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        msgs = sub.wait_for(lambda ms: len(ms) >= 2)
        assert [m.payload for m in msgs] == [b"online", b"offline"]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    late = mqtt_subscriber(("edgewatch/child/status",))
    late_msgs = late.wait_for(lambda ms: len(ms) >= 1)
    assert (late_msgs[0].payload, late_msgs[0].retain) == (b"offline", True)


def test_credentials_and_tls_never_logged(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    publisher_factory: Callable[..., MqttPublisher],
) -> None:
    password = "s3cret-Pa55-" + os.urandom(4).hex()
    caplog.set_level(logging.DEBUG)
    with Mosquitto(username="edge", password=password, tls=True, workdir=tmp_path / "b") as broker:
        assert broker.ca_file is not None
        tls = TlsConfig(ca_file=broker.ca_file)
        sub = Subscriber(
            broker, ("edgewatch/#",), username="edge", password=password, ca_file=broker.ca_file
        )
        try:
            wrong = publisher_factory(
                MqttConfig(
                    port=broker.port,
                    client_id="wrong",
                    username="edge",
                    password=Secret("not-it"),
                    tls=tls,
                ),
                node="wrong",
            )
            good = publisher_factory(
                MqttConfig(
                    port=broker.port,
                    client_id="good",
                    username="edge",
                    password=Secret(password),
                    tls=tls,
                ),
                node="good",
            )
            good.publish_state("cam1", CameraState.DOWN, "rtsp://***@10.0.0.5/stream unreachable")
            sub.wait_topic(good.topics.state("cam1"))
            assert good.connected
            assert not wrong.connected
            no_tls = publisher_factory(
                MqttConfig(
                    port=broker.port, client_id="plain", username="edge", password=Secret(password)
                ),
                node="plain",
            )
            time.sleep(1.0)
            assert not no_tls.connected
            assert not [m for m in sub.messages() if "/wrong/" in m.topic or "/plain/" in m.topic]
        finally:
            sub.close()
    causes = [str(getattr(r, "cause", "")) for r in caplog.records]
    assert any(c.startswith("broker refused the connection") for c in causes)
    assert password not in caplog.text
    assert "not-it" not in caplog.text
    assert any(r.name.startswith("daemon.publish.mqtt.paho") for r in caplog.records)
