"""Per-camera epochs: which run of a camera's frame counter a message belongs to.

A camera's ``seq`` starts again whenever its reader starts again: at every daemon start and
when a hot reload changes the camera. Every payload carries the camera's ``epoch``, new at
each such start, so ``(camera, epoch, seq)`` names one frame for good and subscribers can
de-duplicate by it. An epoch is the wall clock in microseconds when the counter started
(kept strictly increasing within the process): unique across restarts unless the clock is
set back, ordered in practice, and exact as a JSON number (below 2**53).
"""

from __future__ import annotations

import threading
import time


class CameraEpochs:
    """Thread-safe registry of the current epoch of each camera."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epochs: dict[str, int] = {}
        self._last = 0

    def start(self, camera_id: str) -> int:
        """A new epoch for ``camera_id`` (its frame counter starts again)."""
        with self._lock:
            return self._new(camera_id)

    def current(self, camera_id: str) -> int:
        """The camera's epoch; a camera not started yet gets one now."""
        with self._lock:
            epoch = self._epochs.get(camera_id)
            return epoch if epoch is not None else self._new(camera_id)

    def _new(self, camera_id: str) -> int:
        self._last = max(time.time_ns() // 1000, self._last + 1)
        self._epochs[camera_id] = self._last
        return self._last

    def forget(self, camera_id: str) -> None:
        with self._lock:
            self._epochs.pop(camera_id, None)

    def snapshot(self) -> dict[str, int]:
        """Every known camera and its epoch."""
        with self._lock:
            return dict(self._epochs)
