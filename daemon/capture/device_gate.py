"""``DeviceGate``: keeps the NVDEC readers' CUDA work out of a CUDA graph capture.

Capturing a CUDA graph (the torch backend compiles one per batch shape) fails, and fails
the reader thread's own call, when another thread's CUDA work meets it: on the H200 with 48
NVDEC cameras (commit aa04300) the capture was invalidated ("operation failed due to a
previous error during capture") and readers' calls were refused ("operation not permitted
when stream is capturing"). So the readers' device work (a decode call, a frame copy) passes
the gate shared, and a capture passes it alone; a waiting capture goes first, so a stream
of decode calls cannot starve it. A capture takes well under a second, so a reader waits
at most that long per capture, beating its heartbeat meanwhile.

Standard library only: the backend that captures makes one and hands it, through the
pipeline, to the readers of its cameras.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

# How often a waiting reader wakes to beat its heartbeat.
_BEAT_EVERY_S: Final = 0.5
# A capture waits at most this long for the readers' work in progress: a decode call stuck
# inside the gate must not stop the backend for good.
CAPTURE_WAIT_S: Final = 10.0


class GateTimeout(RuntimeError):
    """The readers' work did not leave the gate in time for a capture."""


class DeviceGate:
    """Shared passage for device work, exclusive passage for a graph capture."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._working = 0
        self._capturing = False
        self._waiting_captures = 0

    @contextmanager
    def work(self, waiting: Callable[[], None] = lambda: None) -> Iterator[None]:
        """Device work of a reader; ``waiting`` is called every half second it waits. Never
        nested: a capture waiting between the two would wait for the outer one forever."""
        with self._cond:
            while self._capturing or self._waiting_captures:
                waiting()
                self._cond.wait(_BEAT_EVERY_S)
            self._working += 1
        try:
            yield
        finally:
            with self._cond:
                self._working -= 1
                if not self._working:
                    self._cond.notify_all()

    @contextmanager
    def capture(self, wait_s: float = CAPTURE_WAIT_S) -> Iterator[None]:
        """A graph capture: waits for the work in progress, holds new work back. Raises
        ``GateTimeout`` when the work has not left after ``wait_s``."""
        with self._cond:
            self._waiting_captures += 1
            try:
                if not self._cond.wait_for(
                    lambda: not (self._capturing or self._working), timeout=wait_s
                ):
                    raise GateTimeout(f"NVDEC readers' device work still running after {wait_s} s")
            finally:
                self._waiting_captures -= 1
                if not self._waiting_captures:
                    self._cond.notify_all()
            self._capturing = True
        try:
            yield
        finally:
            with self._cond:
                self._capturing = False
                self._cond.notify_all()
