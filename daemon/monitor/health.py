"""Whether inference makes progress: the batch outcomes behind ``/healthz`` and the watchdog."""

from __future__ import annotations

import time
from typing import Final

from daemon.config.secrets import mask_url

# No batch completed for this long while frames are waiting means inference is wedged.
WEDGED_AFTER_S: Final = 60.0
# This many failed batches in a row is a broken model or runtime, not one bad frame.
FAILING_AFTER_BATCHES: Final = 10


class BatchHealth:
    """Counts completed and failed batches (asyncio loop); read from any thread."""

    def __init__(self) -> None:
        self._batches = 0
        self._failed_in_row = 0
        self._last_failure: str | None = None
        self._last_done = time.monotonic()

    def succeeded(self) -> None:
        """A batch was inferred and published."""
        self._last_done = time.monotonic()
        self._batches += 1
        self._failed_in_row = 0

    def failed(self, exc: Exception) -> int:
        """A batch failed with ``exc``; returns the failures in a row, this one included."""
        self._failed_in_row += 1
        self._last_failure = mask_url(f"{type(exc).__name__}: {exc}".splitlines()[0])
        return self._failed_in_row

    def healthy(self, frames_waiting: bool) -> bool:
        """False when every recent batch failed, or when frames are waiting but no batch has
        completed for a long time."""
        if self._failed_in_row >= FAILING_AFTER_BATCHES:
            return False
        return not (frames_waiting and time.monotonic() - self._last_done >= WEDGED_AFTER_S)

    def detail(self) -> dict[str, object]:
        """The batch part of ``/healthz``."""
        return {
            "batches": self._batches,
            "seconds_since_last_batch": round(time.monotonic() - self._last_done, 1),
            "failed_batches_in_row": self._failed_in_row,
            "last_batch_error": self._last_failure,
        }
