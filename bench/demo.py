"""The demo behind ``make demo`` (``edgewatch bench demo``): the shared sample videos as
cameras, ONNX Runtime on the CPU, a real local mosquitto, and a live per-camera fps table,
for a bounded time.

It runs the same ``Service`` as ``edgewatch run``; the only difference is that the broker is
started here on a free port and a subscriber counts what arrives, to show the output is real.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from daemon.app import serve
from daemon.config.model import AppConfig
from tests.harness.broker import Mosquitto

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


class _Counter:
    """Counts detection messages per camera, and tracked objects and line crossings from the
    events topic, as a real MQTT subscriber would see them."""

    def __init__(self, port: int, prefix: str) -> None:
        self.messages: Counter[str] = Counter()
        self.objects: Counter[str] = Counter()
        # (camera, event id without its counter) -> the track's latest event
        self.tracks: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edgewatch-demo-sub")
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe([(f"{prefix}/+/+/detections", 1), (f"{prefix}/+/+/events", 1)])
        self._client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        payload = json.loads(msg.payload)
        with self._lock:
            if msg.topic.endswith("/events"):
                track = payload["event_id"].rsplit("-", 1)[0]
                self.tracks[(payload["camera"], track)] = payload
                return
            self.messages[payload["camera"]] += 1
            for det in payload["detections"]:
                self.objects[det["name"]] += 1

    def tracking_table(self) -> str:
        """Per camera: objects tracked by class, and line crossings by direction and class."""
        with self._lock:
            tracks = list(self.tracks.items())
        lines = [f"{'camera':<10} {'objects':>7}  {'by class':<34} line crossings"]
        for camera in sorted({cam for (cam, _), _ in tracks}):
            events = [e for (cam, _), e in tracks if cam == camera]
            classes = Counter(e["name"] for e in events)
            crossings = Counter(
                f"{c['line']} {c['direction']} {c['name']}" for e in events for c in e["crossings"]
            )
            by_class = ", ".join(f"{n} {k}" for k, n in classes.most_common(4))
            crossed = ", ".join(f"{k}: {n}" for k, n in sorted(crossings.items())) or "-"
            lines.append(f"{camera:<10} {len(events):>7}  {by_class:<34} {crossed}")
        return "\n".join(lines)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def run_demo(config: AppConfig, duration_s: float) -> int:
    """Serve ``config`` for ``duration_s`` against a local broker; print what arrived."""
    with Mosquitto() as broker:
        config = dataclasses.replace(
            config, mqtt=dataclasses.replace(config.mqtt, port=broker.port)
        )
        counter = _Counter(broker.port, config.mqtt.topic_prefix)
        print(
            f"edgewatch demo: {len(config.enabled_cameras)} cameras, "
            f"broker 127.0.0.1:{broker.port}, {duration_s:.0f} s (Ctrl-C stops early)",
            flush=True,
        )
        try:
            rc = serve(config, duration_s, table=True)
        finally:
            counter.close()
    print("\nMQTT messages received per camera:", dict(sorted(counter.messages.items())))
    print("most frequent objects:", dict(counter.objects.most_common(5)))
    print("\ntracked objects and line crossings (from the events topic):")
    print(counter.tracking_table())
    return rc
