"""How every camera reader (OpenCV's process, NVDEC's thread) paces and thins its frames.

A file is played at its own frame rate and looped, like a live camera; ``max_fps`` skips
frames above a camera's rate. Standard library only: the reader process imports it.
"""

from __future__ import annotations

import time
from typing import Final

# A file whose container reports no usable frame rate is paced at this.
DEFAULT_FILE_FPS: Final = 25.0
# A file that falls this far behind its pacing schedule resynchronises instead of bursting.
MAX_PACING_LAG_S: Final = 1.0
# Slack on top of a reader's configured timeouts before its heartbeat stops (then the
# daemon's stall watchdog replaces it): OpenCV honours its timeouts only approximately.
TIMEOUT_SLACK_S: Final = 5.0
# Frames (or packets) in a row that fail to decode before the connection counts as broken.
MAX_CORRUPT_IN_ROW: Final = 50


class FilePacer:
    """The schedule of a file's frames at its native rate."""

    def __init__(self, fps: float, start: float | None = None) -> None:
        """``fps``: the container's rate (outside 1..240, ``DEFAULT_FILE_FPS`` is used);
        ``start``: when the schedule starts, None to start it at the first frame."""
        self._period = 1.0 / (fps if 1.0 <= fps <= 240.0 else DEFAULT_FILE_FPS)
        self._due = start

    def next_due(self) -> float:
        """Schedule the next frame and return when it is due (wall-clock seconds)."""
        now = time.time()
        due = now if self._due is None else self._due + self._period
        self._due = max(due, now - MAX_PACING_LAG_S)
        return self._due


class FpsLimit:
    """``max_fps``: which frames to keep (the others are still read, so a stream stays
    current)."""

    def __init__(self, max_fps: float | None) -> None:
        self._min_interval = 1.0 / max_fps if max_fps else 0.0
        self._next_keep = 0.0

    def keep(self, now: float) -> bool:
        """Whether the frame read at ``now`` is kept."""
        if not self._min_interval:
            return True
        # A little tolerance so source jitter does not halve the rate.
        if now < self._next_keep - 0.2 * self._min_interval:
            return False
        self._next_keep = max(self._next_keep, now - self._min_interval) + self._min_interval
        return True
