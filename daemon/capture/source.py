"""``CameraSource``: the daemon's handle on one camera, a reader process and its frames.

``ReaderSupervisor`` (daemon/capture/supervisor.py) runs the reader process and owns the
camera's state; ``FrameHandout`` (daemon/capture/handout.py) owns the shared-memory ring the
reader fills and hands its frames out.

Threading contract: ``start``, ``poll``, ``pending_since``, ``counters``, ``want_now`` and
``stop`` are called from the event loop thread; ``acquire_latest`` from worker threads at
the same time. ``poll`` never blocks.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager

import numpy as np
import numpy.typing as npt

from daemon.capture.frame import FrameMeta
from daemon.capture.handout import FrameHandout
from daemon.capture.ring import capacity_for
from daemon.capture.state import CameraState, CaptureCounters, StateChange
from daemon.capture.supervisor import ReaderSupervisor
from daemon.config.model import CameraConfig, CaptureConfig


class CameraSource:
    """One camera: a supervised reader process feeding a shared-memory newest-frame ring."""

    def __init__(self, camera: CameraConfig, capture: CaptureConfig) -> None:
        self.camera_id = camera.id
        self._frames = FrameHandout(camera.id, capacity_for(capture.max_width, capture.max_height))
        self._reader = ReaderSupervisor(camera, capture, self._frames)

    @property
    def state(self) -> CameraState:
        return self._reader.state

    @property
    def frame_hw(self) -> tuple[int, int] | None:
        """(height, width) of the stream's frames; None before it first streamed."""
        return self._reader.frame_hw

    @property
    def last_error(self) -> str | None:
        """Why the camera is not streaming, credentials masked; None while streaming."""
        return self._reader.last_error

    @property
    def pid(self) -> int | None:
        """Process id of the current reader, for diagnostics."""
        return self._reader.pid

    def counters(self) -> CaptureCounters:
        """The camera's counters since this source was made."""
        return dataclasses.replace(self._frames.counts(), restarts=self._reader.restarts)

    def pending_since(self) -> float | None:
        """Capture time of the newest unconsumed frame, or None when there is nothing new."""
        return self._frames.pending_since()

    def start(self) -> None:
        """Spawn the reader; returns at once (the first frame comes a few hundred ms later)."""
        self._reader.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the reader and free the ring. Idempotent; leaves no process or segment."""
        self._reader.stop(timeout)

    def poll(self) -> list[StateChange]:
        """Drain reader events, run the watchdog, return state changes since the last call."""
        changes = self._reader.poll()
        self._frames.release_retired()
        return changes

    def acquire_latest(
        self,
    ) -> AbstractContextManager[tuple[FrameMeta, npt.NDArray[np.uint8]] | None]:
        """``FrameHandout.acquire_latest``: the newest unconsumed frame, pinned in a block."""
        return self._frames.acquire_latest()

    def want_now(self) -> None:
        """A forecast missed: have the reader convert its frames again until the next take."""
        self._frames.want_now()
