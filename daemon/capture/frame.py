"""What every captured frame carries with it through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class CameraState(str, Enum):
    """Published retained on ``<prefix>/<node>/<camera>/state``."""

    STARTING = "starting"
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class FrameMeta:
    camera_id: str
    seq: int
    # Wall-clock seconds (time.time()) when the frame was read from the source.
    capture_ts: float
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class CaptureCounters:
    """Monotonic counters of one camera since the daemon started (restarts included)."""

    frames_read: int = 0
    # Frames read but never taken by the batcher: overwritten in the ring, or not converted
    # because no take was due (daemon/capture/demand.py).
    frames_dropped: int = 0
    reconnects: int = 0
    # Reader processes killed by the watchdog (stalled) or restarted for a larger frame buffer.
    restarts: int = 0
    # Frames the source delivered but that could not be decoded; skipped, never fatal.
    frames_corrupt: int = 0


@dataclass(frozen=True, slots=True)
class StateChange:
    camera_id: str
    state: CameraState
    # Operator-readable cause, credentials already masked; None when streaming.
    reason: str | None = None
