"""What the ``<camera>/stats`` topic carries: one camera over one monitoring interval.

The monitor (``daemon.monitor``) fills these in and a ``Sink`` (``daemon.publish.sink``)
ships them, so they live on the publishing side: the monitor depends on publish, never the
other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from daemon.capture.state import CameraState


@dataclass(frozen=True, slots=True)
class DriftStats:
    """One camera's drift check (``daemon.monitor.drift``): INT8-vs-FP32 shadow agreement over
    the sliding window of samples and the brightness of the interval's processed frames."""

    # F1 of the deployed model's detections against the reference model's; None before a sample.
    agreement: float | None
    samples: int
    # Mean luma 0..255 over the interval's frames; None when none was processed.
    brightness: float | None
    # Whether ``brightness`` lies in the calibration set's range; None when either is unknown.
    brightness_in_range: bool | None


@dataclass(frozen=True, slots=True)
class LineCount:
    """Crossings of one line in one direction by one class, since the tracker started."""

    line: str
    direction: str
    class_name: str
    total: int


@dataclass(frozen=True, slots=True)
class TrackingStats:
    """One camera's object tracking (``daemon.track``): totals since start, and now."""

    active_tracks: int
    tracks_total: int
    # Events published by type (new / update / end).
    events_total: Mapping[str, int]
    line_crossings: tuple[LineCount, ...]
    # Reported objects in each zone now.
    zone_objects: Mapping[str, int]
    # Snapshots encoded and handed on / dropped (over the rate, or the encoder behind).
    snapshots_sent: int = 0
    snapshots_dropped: int = 0


@dataclass(frozen=True, slots=True)
class CameraStats:
    """One camera over one interval (``ts - interval_s`` .. ``ts``)."""

    camera_id: str
    ts: float
    interval_s: float
    state: CameraState
    input_fps: float
    processed_fps: float
    # Frames read but never inferred (a newer one was taken instead): interval, since start.
    dropped: int
    dropped_total: int
    frames_read: int
    frames_read_total: int
    processed: int
    processed_total: int
    reconnects_total: int
    # Capture -> publish, over the interval's most recent ``window`` frames; None if none.
    latency_p50_s: float | None
    latency_p95_s: float | None
    # None when the drift check is off.
    drift: DriftStats | None = None
    # None when tracking is off for the camera.
    tracking: TrackingStats | None = None
