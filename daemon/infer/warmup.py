"""Which batch shapes the backend has been warmed for, and warming the ones still missing.

A GPU backend compiles a batch shape the first time it meets it, stalling that batch for
up to a second. The pipeline warms every shape it can produce before it reports ready, and
holds back a camera whose frames would need a new shape (another resolution, in rect mode)
until that shape is warm, so no served batch pays for a compile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from daemon.batch.letterbox import batch_hws, rect_shape
from daemon.infer.backend import Backend

log = logging.getLogger(__name__)


class ShapeWarmer:
    """The set of warm batch sizes (height, width) of one backend; thread-safe."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        # Rect shapes of the frame sizes warmed so far, and every batch size they combine to.
        self._rects: set[tuple[int, int]] = set()
        self._warm: set[tuple[int, int]] = set()

    def is_warm(self, frame_hw: tuple[int, int] | None) -> bool:
        """Whether a camera of this frame size can be batched without a compile (an unknown
        size counts as cold in rect mode)."""
        if not self._backend.dynamic_hw:
            return bool(self._warm)
        if frame_hw is None:
            return False
        with self._lock:
            return rect_shape(frame_hw, self._backend.input_hw) in self._rects

    def warm(self, frame_hws: Iterable[tuple[int, int]]) -> None:
        """Warm every batch size cameras of ``frame_hws`` (with those warmed before) can
        produce (blocking: run it off the event loop)."""
        backend = self._backend
        with self._lock:
            rects = self._rects | {rect_shape(hw, backend.input_hw) for hw in frame_hws}
            wanted = batch_hws(rects, backend.input_hw, backend.dynamic_hw) - self._warm
        if not wanted and self._warm:
            with self._lock:
                self._rects |= rects
            return
        started = time.perf_counter()
        backend.warm_up(sorted(wanted))
        with self._lock:
            self._rects |= rects
            self._warm |= wanted or {backend.input_hw}
        log.info(
            "backend warm",
            extra={
                "backend": backend.name,
                "input_hw": sorted(list(hw) for hw in wanted),
                "max_batch": backend.max_batch,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
