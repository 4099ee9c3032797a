"""The per-camera tracking stage the batch worker calls after NMS: detections -> events.

Batches may run on several worker threads at once, so two frames of one camera can reach
their stage out of order; a lock serialises the camera and a frame older than the last one
tracked is skipped (counted): the tracker works on time, so a skipped frame is just a gap.
"""

from __future__ import annotations

import threading

import numpy as np

from daemon.config.model import CameraConfig
from daemon.config.tracking import TrackingConfig
from daemon.postprocess.classes import resolve_classes
from daemon.postprocess.yolo import Detections
from daemon.track.bytetrack import ByteTracker
from daemon.track.events import CameraEvents, EventCounts, TrackEvent


class CameraTracking:
    """ByteTrack plus the event state of one camera."""

    def __init__(
        self, camera: CameraConfig, config: TrackingConfig, names: tuple[str, ...]
    ) -> None:
        classes = config.classes if config.classes is not None else camera.classes
        key = "tracking.classes" if config.classes is not None else "classes"
        self._class_ids = resolve_classes(classes, names, f"cameras[{camera.id}].{key}")
        self._low = config.low_threshold
        self.config = config
        self._tracker = ByteTracker(config)
        self._events = CameraEvents(camera.id, config, camera.zones, camera.lines, names)
        self._lock = threading.Lock()
        self._last_ts = float("-inf")
        self._closed = False
        self.skipped = 0

    def process(self, ts: float, frame_size: tuple[int, int], dets: Detections) -> list[TrackEvent]:
        """Track one frame's detections (any score: the stage keeps what it needs)."""
        keep = dets.scores > self._low
        if self._class_ids is not None:
            keep &= np.isin(dets.class_ids, self._class_ids)
        dets = dets if bool(keep.all()) else dets.select(keep)
        with self._lock:
            if self._closed:  # removed while this frame was in flight
                return []
            if ts <= self._last_ts:
                self.skipped += 1
                return []
            self._last_ts = ts
            tracked = self._tracker.update(ts, dets.boxes, dets.scores)
            return self._events.observe(ts, frame_size, dets, tracked)

    def close(self) -> list[TrackEvent]:
        """``end`` events for the objects still in view: the camera is stopping."""
        with self._lock:
            self._closed = True
            return self._events.close()

    def counts(self) -> EventCounts:
        with self._lock:
            return self._events.counts()
