"""When will the consumer next take a frame from a camera? A forecast from its past takes.

The reader must decode every H.264 frame (each one references the previous), but the
conversion to BGR and the copy into the ring (a large share of a 1080p read) are
only worth doing for frames someone will look at. On a CPU box inference takes a camera's
frame every 200-300 ms while the camera delivers one every 33-40 ms, so most conversions
are wasted. The daemon tells each reader when it expects to come back; the reader converts
only the frames grabbed shortly before that moment, and every frame once it has passed.

A forecast that is too late is a *miss*: the dispatcher finds a live camera without a
pending frame and calls ``CameraSource.want_now``; the reader converts its next frame, and
the forecast forgets its rhythm. Forgetting matters: a take delayed by a miss is a long
interval, and learning from it would push the next forecast later still, so a camera could
settle at every other batch for good. A forecast too early only converts more frames.
"""

from __future__ import annotations

from typing import Final

# Take intervals longer than this are outages or idle cameras, not a rhythm to predict.
_MAX_INTERVAL_S: Final = 5.0
# Weight of the newest interval in the running mean.
_SMOOTHING: Final = 0.25
# Forecast this fraction of the mean interval ahead: inference time jitters by ~10 %, and
# a miss costs more (a camera left out of a batch) than an early guess (a few conversions).
_EARLY: Final = 0.8

# A demand time meaning "convert every frame" (fresh rings start with it).
NOW: Final = 0.0


class DemandForecast:
    """Predicts one camera's next take from the running mean of the intervals between takes."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._mean: float | None = None

    def taken(self, now: float) -> float:
        """Record a take at ``now``; return when the next one is expected (``NOW``: unknown)."""
        last, self._last = self._last, now
        if last is None or not 0.0 < now - last <= _MAX_INTERVAL_S:
            self._mean = None
            return NOW
        interval = now - last
        self._mean = (
            interval
            if self._mean is None
            else (1.0 - _SMOOTHING) * self._mean + _SMOOTHING * interval
        )
        return now + _EARLY * self._mean

    def miss(self) -> None:
        """The consumer came before the forecast: start learning the rhythm afresh."""
        self._last = None
        self._mean = None
