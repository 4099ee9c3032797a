"""Where the pipeline's results go: the interfaces ``Pipeline`` and ``Service`` are written to.

``MqttPublisher`` (``daemon.publish.mqtt``) is the ``Publisher``; it satisfies the protocols
structurally. A pipeline in a worker process publishes to a ``Sink`` that relays to the
service's publisher (``daemon.workers.relay``). Every ``publish_*`` call comes from the
asyncio loop, a batch worker thread or the snapshot encoder, so none may block: a sink
queues and returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from daemon.capture.frame import FrameMeta
from daemon.capture.state import CameraState
from daemon.postprocess.yolo import Detections
from daemon.publish.camera_stats import CameraStats
from daemon.publish.counters import PublisherCounters
from daemon.track.events import TrackEvent


class Sink(Protocol):
    """Receives detections, camera state, interval stats, object events and snapshots."""

    def start_camera(self, camera_id: str) -> int:
        """A camera's reader starts (again): returns the camera's new epoch for payloads."""
        ...

    def remove_camera(self, camera_id: str) -> None:
        """The camera is gone from the configuration: forget it and its state."""
        ...

    def publish_detections(
        self,
        meta: FrameMeta,
        detections: Detections,
        names: Sequence[str],
        publish_ts: float,
        epoch: int | None = None,
    ) -> None:
        """One frame's detections; ``epoch``: the camera's epoch when the frame was read."""
        ...

    def publish_state(self, camera_id: str, state: CameraState, reason: str | None) -> None:
        """The camera's current state (latest wins); ``reason`` has credentials masked."""
        ...

    def publish_stats(self, camera_id: str, stats: CameraStats) -> None:
        """One camera's stats over one monitoring interval."""
        ...

    def publish_events(
        self, events: Sequence[TrackEvent], names: Sequence[str], publish_ts: float
    ) -> None:
        """Object events of tracked cameras (``new`` / ``update`` / ``end``)."""
        ...

    def publish_snapshot(self, camera_id: str, payload: bytes) -> None:
        """One event's snapshot, already encoded (``daemon.track.snapshots``)."""
        ...


class Publisher(Sink, Protocol):
    """A ``Sink`` the service owns: it delivers in the background and counts what it did."""

    def start(self) -> None:
        """Begin delivering (in the background); returns at once."""
        ...

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver or persist what is queued, within ``timeout`` seconds, and stop."""
        ...

    def publish_message(self, topic: str, payload: bytes) -> None:
        """Queue an already built message (at-least-once), as the ``publish_*`` calls do."""
        ...

    def counters(self) -> PublisherCounters:
        """Delivery counters and state, for the metrics and ``/healthz``."""
        ...
