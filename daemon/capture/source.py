"""``CameraSource``: the daemon's handle on one camera, its reader and its frames.

``ReaderSupervisor`` (daemon/capture/supervisor.py) runs the reader and owns the camera's
state. An OpenCV camera's reader is a process filling a shared-memory ring that
``FrameHandout`` (daemon/capture/handout.py) hands out as HxWx3 BGR numpy arrays; an NVDEC
camera's (``decoder: nvdec`` with a GPU to decode on) is a thread filling ``DeviceFrames``
(daemon/capture/nvdec.py), handed out as HxWx3 RGB CUDA tensors.

Threading contract: ``start``, ``poll``, ``pending_since``, ``counters``, ``want_now`` and
``stop`` are called from the event loop thread; ``acquire_latest`` from worker threads at
the same time. ``poll`` never blocks.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from typing import Protocol

from daemon.capture.frame import FrameImage, FrameMeta
from daemon.capture.handout import FrameHandout
from daemon.capture.nvdec import DeviceFrames, NvdecLauncher, NvdecTarget
from daemon.capture.ring import capacity_for
from daemon.capture.state import CameraState, CaptureCounters, StateChange
from daemon.capture.supervisor import FrameStore, Launcher, ProcessLauncher, ReaderSupervisor
from daemon.capture.wake import WakeSender
from daemon.config.model import CameraConfig, CaptureConfig, Decoder


class _Frames(FrameStore, Protocol):
    """A camera's newest-frame store as the source uses it."""

    def pending_since(self) -> float | None: ...

    def acquire_latest(self) -> AbstractContextManager[tuple[FrameMeta, FrameImage] | None]: ...

    def want_now(self) -> None: ...

    def release_retired(self) -> None: ...


class CameraSource:
    """One camera: a supervised reader feeding a newest-frame store."""

    def __init__(
        self,
        camera: CameraConfig,
        capture: CaptureConfig,
        *,
        nvdec: NvdecTarget | None = None,
        wake: WakeSender | None = None,
    ) -> None:
        """``nvdec``: where a ``decoder: nvdec`` camera decodes to; without it such a camera
        is read by OpenCV (the caller logs why). ``wake``: signalled after each frame any of
        the camera's readers publishes (``daemon/capture/wake.py``)."""
        self.camera_id = camera.id
        self._frames: _Frames
        launch: Launcher
        if camera.decoder is Decoder.NVDEC and nvdec is not None:
            device_frames = DeviceFrames(camera.id, wake)
            launch = NvdecLauncher(camera, capture, device_frames, nvdec)
            self._frames = device_frames
        else:
            ring = FrameHandout(camera.id, capacity_for(capture.max_width, capture.max_height))
            launch = ProcessLauncher(camera, capture, ring, wake)
            self._frames = ring
        self._reader = ReaderSupervisor(camera, capture, self._frames, launch)

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
        """Process (or NVDEC thread) id of the current reader, for diagnostics."""
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

    def acquire_latest(self) -> AbstractContextManager[tuple[FrameMeta, FrameImage] | None]:
        """The newest unconsumed frame, pinned in a block (``FrameHandout.acquire_latest``,
        ``DeviceFrames.acquire_latest``)."""
        return self._frames.acquire_latest()

    def want_now(self) -> None:
        """A forecast missed: have the reader convert its frames again until the next take."""
        self._frames.want_now()
