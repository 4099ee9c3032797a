"""The tracking side of the pipeline: one ``CameraTracking`` per camera that tracks, the
snapshot encoder they share, and where their events and snapshots go.

The batch worker hands a batch's frames to ``track`` after NMS (and looks a camera's stage up
with ``get``); the asyncio loop adds and closes cameras and publishes the events a batch
produced.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from daemon.config.model import CameraConfig
from daemon.config.tracking import TrackingConfig
from daemon.track.events import EventCounts, TrackEvent
from daemon.track.snapshots import Snapshotter
from daemon.track.stage import CameraFrame, CameraTracking, track_batch


class TrackingSink(Protocol):
    """Where events and snapshots go (the daemon's ``Sink`` is one)."""

    def publish_events(
        self, events: Sequence[TrackEvent], names: Sequence[str], publish_ts: float
    ) -> None:
        """Object events, published at ``publish_ts`` (epoch seconds)."""
        ...

    def publish_snapshot(self, camera_id: str, payload: bytes) -> None:
        """One event's encoded snapshot."""
        ...


@dataclass(frozen=True, slots=True)
class TrackingCounts:
    """One tracked camera's totals: its events and its snapshots (sent, dropped)."""

    events: EventCounts
    snapshots_sent: int
    snapshots_dropped: int


class TrackedCameras:
    """The tracking stage of each camera that tracks."""

    def __init__(
        self, names: tuple[str, ...], sink: TrackingSink, *, directory_share: float = 1.0
    ) -> None:
        """``directory_share``: see ``Snapshotter``."""
        self._names = names
        self._sink = sink
        self._directory_share = directory_share
        self._stages: dict[str, CameraTracking] = {}
        # Started with the first camera that wants snapshots.
        self._snapshots: Snapshotter | None = None

    def add(self, camera: CameraConfig, config: TrackingConfig) -> None:
        """Track ``camera`` with ``config`` (no-op when tracking is off for it)."""
        if not config.enabled:
            return
        if config.snapshots.enabled and self._snapshots is None:
            self._snapshots = Snapshotter(self._sink.publish_snapshot, self._directory_share)
        self._stages[camera.id] = CameraTracking(camera, config, self._names, self._snapshots)

    @property
    def active(self) -> bool:
        """Whether any camera tracks."""
        return bool(self._stages)

    def get(self, camera_id: str) -> CameraTracking | None:
        """The camera's stage; None when it does not track (any thread)."""
        return self._stages.get(camera_id)

    def track(self, frames: Iterable[tuple[str, CameraFrame]]) -> list[TrackEvent]:
        """Track a batch's frames (camera id, frame), all or none; the cameras that do not
        track are left out. Returns the events (worker thread)."""
        return track_batch(
            [
                (stage, frame)
                for camera_id, frame in frames
                if (stage := self.get(camera_id)) is not None
            ]
        )

    def low_thresholds(self) -> list[float]:
        """The lowest score each tracker looks at: the batch must be decoded down to them."""
        return [stage.config.low_threshold for stage in self._stages.values()]

    def publish(self, events: list[TrackEvent]) -> None:
        """Hand a batch's events to the sink."""
        if events:
            self._sink.publish_events(events, self._names, time.time())

    def close(self, camera_id: str) -> None:
        """Stop tracking the camera; its objects still in view get their ``end`` events."""
        stage = self._stages.pop(camera_id, None)
        if stage is not None:
            self.publish(stage.close())

    def close_all(self) -> None:
        """Close every camera, then encode the snapshots still queued and stop the encoder."""
        for camera_id in list(self._stages):
            self.close(camera_id)
        if self._snapshots is not None:
            self._snapshots.close()

    def counts(self, camera_id: str) -> TrackingCounts | None:
        """The camera's totals; None when it does not track."""
        stage = self._stages.get(camera_id)
        if stage is None:
            return None
        sent, dropped = (0, 0) if self._snapshots is None else self._snapshots.counts(camera_id)
        return TrackingCounts(stage.counts(), sent, dropped)
