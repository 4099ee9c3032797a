"""The measuring MQTT client of ``bench e2e``: the same code measures us and the baseline.

It subscribes to ``<prefix>/<node>/+/detections`` and ``.../stats`` and, inside a measuring
window only (warm-up excluded), counts delivered frames per camera and the capture->receipt
latency (receipt wall time minus the payload's ``capture_ts``; both ends on this machine's
clock). Drops come from the publisher's own per-camera ``dropped_total`` counter: the change
across the window.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class CameraMeasure:
    camera: str
    delivered: int
    fps: float
    dropped: int | None


@dataclass(frozen=True)
class StreamMeasure:
    """What the subscriber saw during one window."""

    window_s: float
    cameras: tuple[CameraMeasure, ...]
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    latency_ms_p99: float | None
    malformed: int

    @property
    def total_fps(self) -> float:
        return sum(c.fps for c in self.cameras)

    @property
    def dropped(self) -> int | None:
        drops = [c.dropped for c in self.cameras]
        return None if any(d is None for d in drops) else sum(d for d in drops if d is not None)


class Subscriber:
    """Counts what arrives for ``node``; call ``open_window()``, later ``close_window()``."""

    def __init__(self, port: int, prefix: str, node: str) -> None:
        self._lock = threading.Lock()
        self._window_start: float | None = None
        self._window_end: float | None = None
        self._delivered: dict[str, int] = {}
        self._latencies: list[float] = []
        self._malformed = 0
        # camera -> (dropped_total at the first stats in the window, at the latest).
        self._drops: dict[str, tuple[int, int]] = {}
        self._last_drop: dict[str, int] = {}
        # Every message received, malformed ones included (tests wait on it).
        self.messages = 0
        # Cameras that delivered at least one detections message, in the window or not.
        self._streaming: set[str] = set()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{node}")
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(
            [(f"{prefix}/{node}/+/detections", 1), (f"{prefix}/{node}/+/stats", 1)]
        )
        self._client.loop_start()

    def open_window(self) -> None:
        with self._lock:
            self._window_start = time.time()
            # A camera's count starts from the last stats seen before the window.
            self._drops = {cid: (v, v) for cid, v in self._last_drop.items()}

    def close_window(self) -> StreamMeasure:
        with self._lock:
            start = self._window_start
            if start is None:
                raise RuntimeError("close_window() before open_window()")
            self._window_end = end = time.time()
            window = end - start
            cams = sorted(set(self._delivered) | set(self._drops))
            measures = tuple(
                CameraMeasure(
                    camera=cid,
                    delivered=self._delivered.get(cid, 0),
                    fps=self._delivered.get(cid, 0) / window,
                    dropped=(self._drops[cid][1] - self._drops[cid][0])
                    if cid in self._drops
                    else None,
                )
                for cid in cams
            )
            lat = np.asarray(self._latencies) * 1000.0
        p50, p95, p99 = (
            (float(v) for v in np.percentile(lat, (50, 95, 99))) if lat.size else (None,) * 3
        )
        return StreamMeasure(window, measures, p50, p95, p99, self._malformed)

    def streaming(self) -> int:
        """How many cameras have delivered detections so far (window or not)."""
        with self._lock:
            return len(self._streaming)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def _in_window(self, now: float) -> bool:
        return (
            self._window_start is not None
            and now >= self._window_start
            and (self._window_end is None or now <= self._window_end)
        )

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        try:
            payload = json.loads(msg.payload)
            camera = str(payload["camera"])
        except (ValueError, KeyError, TypeError):
            with self._lock:
                self.messages += 1
                self._malformed += 1
            return
        with self._lock:
            self.messages += 1
            if msg.topic.endswith("/stats"):
                dropped = payload.get("dropped_total")
                if isinstance(dropped, int):
                    self._last_drop[camera] = dropped
                    if self._in_window(now):
                        first = self._drops.get(camera, (dropped, dropped))[0]
                        self._drops[camera] = (first, dropped)
                return
            self._streaming.add(camera)
            if not self._in_window(now):
                return
            capture_ts = payload.get("capture_ts")
            if not isinstance(capture_ts, (int, float)):
                self._malformed += 1
                return
            self._delivered[camera] = self._delivered.get(camera, 0) + 1
            self._latencies.append(now - float(capture_ts))
