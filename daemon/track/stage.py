"""The per-camera tracking stage the batch worker calls after NMS: detections -> events.

``track_batch`` tracks one frame of each camera of a batch
(``daemon.track.bytetrack.update_batch``); each camera keeps its own tracks, events and
configuration.

Batches may run on several worker threads at once, so two frames of one camera can reach
their stage out of order; a lock serialises the camera and a frame older than the last one
tracked is skipped (counted): the tracker works on time, so a skipped frame is just a gap.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from daemon.batch.images import BatchImages
from daemon.batch.letterbox import LetterboxGeometry
from daemon.config.model import CameraConfig
from daemon.config.tracking import TrackingConfig
from daemon.postprocess.classes import resolve_classes
from daemon.postprocess.yolo import Detections
from daemon.track.bytetrack import ByteTracker, TrackFrame, TrackInput, update_batch
from daemon.track.events import CameraEvents, EventCounts, EventType, TrackEvent
from daemon.track.snapshots import SnapshotJob, Snapshotter, crop_from_batch


@dataclass(frozen=True, slots=True)
class FramePixels:
    """The letterboxed image the model saw (on the host or a device) and how it maps to the
    source frame."""

    image: BatchImages
    geometry: LetterboxGeometry


@dataclass(frozen=True, slots=True)
class CameraFrame:
    """One camera's frame for its stage: capture time, frame size (width, height), the
    detections after NMS (any score) and, for snapshots, the pixels."""

    ts: float
    frame_size: tuple[int, int]
    dets: Detections
    pixels: FramePixels | None = None


@dataclass(frozen=True, slots=True)
class _Best:
    crop: npt.NDArray[np.uint8]
    ts: float
    score: float
    box: tuple[float, float, float, float]


class CameraTracking:
    """ByteTrack plus the event state of one camera (and its snapshots, when on)."""

    def __init__(
        self,
        camera: CameraConfig,
        config: TrackingConfig,
        names: tuple[str, ...],
        snapshots: Snapshotter | None = None,
    ) -> None:
        classes = config.classes if config.classes is not None else camera.classes
        key = "tracking.classes" if config.classes is not None else "classes"
        self._class_ids = resolve_classes(classes, names, f"cameras[{camera.id}].{key}")
        self._low = config.low_threshold
        self.config = config
        self._camera = camera.id
        self._tracker = ByteTracker(config)
        self._events = CameraEvents(camera.id, config, camera.zones, camera.lines, names)
        self._snapshots = snapshots if config.snapshots.enabled else None
        self._best: dict[int, _Best] = {}
        self._snapped: dict[int, float] = {}  # track -> capture time of the crop last offered
        self._lock = threading.Lock()
        self._last_ts = float("-inf")
        self._closed = False
        self.skipped = 0

    def process(
        self,
        ts: float,
        frame_size: tuple[int, int],
        dets: Detections,
        pixels: FramePixels | None = None,
    ) -> list[TrackEvent]:
        """Track one frame's detections (any score: the stage keeps what it needs)."""
        return track_batch([(self, CameraFrame(ts, frame_size, dets, pixels))])

    def _select(self, dets: Detections) -> Detections:
        """The detections the tracker looks at: above its low threshold, of its classes."""
        keep = dets.scores > self._low
        if self._class_ids is not None:
            keep &= np.isin(dets.class_ids, self._class_ids)
        # A count, not keep.all(): cheaper on every camera-frame (see CameraFilter.apply).
        return dets if np.count_nonzero(keep) == len(keep) else dets.select(keep)

    def _admit(self, ts: float) -> bool:
        """Whether a frame at ``ts`` is tracked (the lock held): the camera is open and the
        frame newer than the last one tracked."""
        if self._closed:  # removed while this frame was in flight
            return False
        if ts <= self._last_ts:
            self.skipped += 1
            return False
        self._last_ts = ts
        return True

    def _observe(self, frame: CameraFrame, tracked: TrackFrame) -> list[TrackEvent]:
        """The events of a tracked frame (the lock held); keeps and offers its snapshots."""
        events = self._events.observe(frame.ts, frame.frame_size, frame.dets, tracked)
        if self._snapshots is not None:
            if frame.pixels is not None:
                self._keep_best(frame.ts, frame.pixels)
            self._offer(self._snapshots, events)
            for track_id in tracked.ended.tolist():
                self._forget(track_id)
        return events

    def close(self) -> list[TrackEvent]:
        """``end`` events for the objects still in view: the camera is stopping."""
        with self._lock:
            self._closed = True
            events = self._events.close()
            if self._snapshots is not None:
                self._offer(self._snapshots, events)
            return events

    def counts(self) -> EventCounts:
        """The camera's event totals (for the stats topic and the metrics)."""
        with self._lock:
            return self._events.counts()

    def _keep_best(self, ts: float, pixels: FramePixels) -> None:
        for track_id, box, score in self._events.improved:
            crop = crop_from_batch(pixels.image, pixels.geometry, box)
            if crop is not None:
                self._best[track_id] = _Best(crop, ts, score, box)

    def _offer(self, snapshots: Snapshotter, events: list[TrackEvent]) -> None:
        """A snapshot for each event whose best frame has not been offered yet."""
        for event in events:
            best = self._best.get(event.track_id)
            if best is not None and self._snapped.get(event.track_id) != best.ts:
                job = SnapshotJob(
                    self._camera, event.event_id, event.track_id, best.ts, best.score,
                    best.box, best.crop, self.config.snapshots,
                )  # fmt: skip
                if snapshots.offer(job):
                    self._snapped[event.track_id] = best.ts
            if event.type is EventType.END:
                self._forget(event.track_id)

    def _forget(self, track_id: int) -> None:
        self._best.pop(track_id, None)
        self._snapped.pop(track_id, None)


def track_batch(frames: Sequence[tuple[CameraTracking, CameraFrame]]) -> list[TrackEvent]:
    """Track one frame of each of several cameras; returns the events in the order of
    ``frames``. A camera appears at most once.

    The cameras' locks are held for the pass, taken in one fixed order so that batches
    sharing cameras on other threads cannot deadlock; a closed camera, or a frame not newer
    than its camera's last, is left out (and counted) as ``CameraTracking.process`` does."""
    stages = [stage for stage, _ in frames]
    if len({id(stage) for stage in stages}) != len(stages):
        raise ValueError("a camera appears twice in one batch")
    selected = [
        (stage, CameraFrame(f.ts, f.frame_size, stage._select(f.dets), f.pixels))
        for stage, f in frames
    ]
    with ExitStack() as held:
        for stage in sorted(stages, key=id):
            held.enter_context(stage._lock)
        admitted = [(stage, frame) for stage, frame in selected if stage._admit(frame.ts)]
        tracked = update_batch(
            [TrackInput(s._tracker, f.ts, f.dets.boxes, f.dets.scores) for s, f in admitted]
        )
        events: list[TrackEvent] = []
        for (stage, frame), result in zip(admitted, tracked, strict=True):
            events += stage._observe(frame, result)
        return events
