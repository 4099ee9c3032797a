"""The ``Sink`` calls whose MQTT messages are built the same way wherever they are queued.

Detections, stats, events and snapshots become ``(topic, payload)`` pairs here, once: the
service's ``MqttPublisher`` queues them in its outbox, a pipeline worker's ``RelaySink``
(``daemon.workers.relay``) sends them to the service. Each says where a camera's current
epoch comes from and where the finished messages go.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from daemon.capture.frame import FrameMeta
from daemon.postprocess.yolo import Detections
from daemon.publish.camera_stats import CameraStats
from daemon.publish.payloads import detections_payload, event_payload, stats_payload
from daemon.publish.topics import Topics
from daemon.track.events import TrackEvent


class QueuedMessages(ABC):
    """``publish_detections``, ``publish_stats``, ``publish_events`` and
    ``publish_snapshot`` of a ``Sink``, over ``_queue`` and ``_current_epoch``."""

    topics: Topics

    @abstractmethod
    def _current_epoch(self, camera_id: str) -> int:
        """The camera's epoch for a payload that does not carry its own."""

    @abstractmethod
    def _queue(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Queue finished ``(topic, payload)`` messages in order (at-least-once)."""

    def publish_detections(
        self,
        meta: FrameMeta,
        detections: Detections,
        names: Sequence[str],
        publish_ts: float,
        epoch: int | None = None,
    ) -> None:
        """Queue one frame's detections. ``epoch``: the camera's epoch when the frame was
        read (default: its current one)."""
        if epoch is None:
            epoch = self._current_epoch(meta.camera_id)
        payload = detections_payload(meta, epoch, detections, names, publish_ts)
        self._queue(((self.topics.detections(meta.camera_id), payload),))

    def publish_events(
        self, events: Sequence[TrackEvent], names: Sequence[str], publish_ts: float
    ) -> None:
        """Queue object events, each on its camera's events topic."""
        if events:
            self._queue([
                (self.topics.camera(e.camera, "events"), event_payload(e, names, publish_ts))
                for e in events
            ])  # fmt: skip

    def publish_snapshot(self, camera_id: str, payload: bytes) -> None:
        """Queue one event snapshot."""
        self._queue(((self.topics.camera(camera_id, "snapshot"), payload),))

    def publish_stats(self, camera_id: str, stats: CameraStats) -> None:
        """Queue one camera's interval stats."""
        payload = stats_payload(stats, self._current_epoch(camera_id))
        self._queue(((self.topics.stats(camera_id), payload),))
