"""What the daemon knows about a camera besides its frames: state, state changes, counters.

Standard library only: the ring (and so the reader process) counts into ``CaptureCounters``.
"""

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
class StateChange:
    camera_id: str
    state: CameraState
    # Operator-readable cause, credentials already masked; None when streaming.
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class CaptureCounters:
    """Monotonic counters of one camera since the daemon started (restarts included)."""

    frames_read: int = 0
    # Frames read but never taken by the batcher: overwritten in the ring, or not converted
    # because no take was due (daemon/capture/demand.py).
    frames_dropped: int = 0
    reconnects: int = 0
    # Reader processes killed by the watchdog (stalled) or restarted for a larger frame
    # buffer. Counted by the daemon, not in the ring (always 0 in ``FrameRing.counts``).
    restarts: int = 0
    # Frames the source delivered but that could not be decoded; skipped, never fatal.
    frames_corrupt: int = 0
