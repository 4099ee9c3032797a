"""``ReaderSupervisor``: keeps one camera's reader running and says how it is doing.

A reader is a process (OpenCV, ``ProcessLauncher``) or a thread of the pipeline's own
process (NVDEC, ``daemon/capture/nvdec.py``); either fills the camera's frame store and
reports ``ReaderEvent``s over a connection. The supervisor starts it, drains its events,
stops a reader whose heartbeat stopped and starts a new one with backoff.

State rule: STARTING until the first frame, STREAMING while frames arrive, RECONNECTING
while the reader retries or its heartbeat is silent for ``HEARTBEAT_TIMEOUT_S`` (a stopped
or hung reader; it is replaced after ``stall_timeout_s``), DOWN when the camera is stopped
or disabled, or has kept failing for ``2 * reconnect_max_s`` since its first failure
without a frame in between (the whole backoff ladder failed; 10 s by default). A DOWN
camera keeps retrying and returns to STREAMING by itself.

Threading contract: everything runs on the event loop thread except ``pid`` (any thread).
``poll`` never blocks (a pipe poll, a waitpid and a few header reads).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Final, Protocol

from daemon.capture.gstreamer import GstPipeline, jetson_pipeline
from daemon.capture.handout import FrameHandout
from daemon.capture.protocol import (
    EXIT_FRAME_TOO_LARGE,
    HEARTBEAT_TIMEOUT_S,
    SPAWN,
    FrameTooLarge,
    Notice,
    ReaderEvent,
    ReaderSpec,
    Reconnecting,
    Streaming,
)
from daemon.capture.reader import run_reader
from daemon.capture.ring import capacity_for
from daemon.capture.state import CameraState, CaptureCounters, StateChange
from daemon.capture.wake import WakeSender
from daemon.config.model import CameraConfig, CaptureConfig, Decoder, VideoCodec
from daemon.config.secrets import mask_text

# Named for CameraSource, the daemon's handle on a camera: one logger per camera's source.
log = logging.getLogger("daemon.capture.source")

_EVENTS_PER_POLL: Final = 64


class EventSource(Protocol):
    """The receiving end of a reader's events (a ``multiprocessing`` connection)."""

    def poll(self) -> bool:
        """Whether an event is waiting (never blocks)."""
        ...

    def recv(self) -> ReaderEvent:
        """The next event (after ``poll`` said one is waiting)."""
        ...


class RunningReader(Protocol):
    """One incarnation of a camera's reader, as the supervisor sees it."""

    @property
    def pid(self) -> int | None:
        """Process (or thread) id, for diagnostics; None once unknown."""
        ...

    @property
    def exitcode(self) -> int | None:
        """None while it runs; its exit status once it has ended."""
        ...

    @property
    def events(self) -> EventSource:
        """Where its ``ReaderEvent``s arrive."""
        ...

    def stop(self, timeout: float) -> None:
        """End it (idempotent); afterwards it writes no frame and sends no event."""
        ...


class FrameStore(Protocol):
    """What the supervisor reads of the camera's frame store."""

    def heartbeat(self) -> float | None:
        """When the reader last showed it was running; None before a reader."""
        ...

    def counts(self) -> CaptureCounters:
        """The camera's capture counters (without ``restarts``)."""
        ...

    def close(self) -> None:
        """Free the store; no frame is taken from it afterwards."""
        ...


# Starts a reader whose frame slots hold at least the given bytes (None: as they are);
# None when the store could not be made ready (the next poll tries again).
Launcher = Callable[[int | None], RunningReader | None]


@dataclass(slots=True)
class _Reader:
    """One incarnation of the reader with when it started."""

    running: RunningReader
    started: float


@dataclass(slots=True)
class _ProcessReader:
    """A reader process and its pipe (``RunningReader``)."""

    process: BaseProcess
    conn: Connection

    @property
    def pid(self) -> int | None:
        try:
            return self.process.pid
        except ValueError:  # the process object was closed meanwhile
            return None

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    @property
    def events(self) -> EventSource:
        return self.conn

    def stop(self, timeout: float) -> None:
        process = self.process
        if process.exitcode is None:
            process.terminate()
            process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join(timeout)
        process.close()
        self.conn.close()


class ProcessLauncher:
    """Starts a camera's OpenCV reader process on its shared-memory ring (``Launcher``);
    every one it starts signals ``wake`` after each frame it publishes."""

    def __init__(
        self,
        camera: CameraConfig,
        capture: CaptureConfig,
        frames: FrameHandout,
        wake: WakeSender | None = None,
    ) -> None:
        self._camera = camera
        self._capture = capture
        self._frames = frames
        self._wake = wake

    def __call__(self, min_capacity: int | None) -> RunningReader | None:
        ring = self._frames.prepare(min_capacity)
        if ring is None:
            return None
        camera, capture = self._camera, self._capture
        spec = ReaderSpec(
            camera_id=camera.id,
            url=camera.url,
            max_fps=camera.max_fps,
            open_timeout_s=capture.open_timeout_s,
            read_timeout_s=capture.read_timeout_s,
            reconnect_initial_s=capture.reconnect_initial_s,
            reconnect_max_s=capture.reconnect_max_s,
            shm_name=ring.shm_name,
            capacity=ring.capacity,
            gstreamer=self._gstreamer(),
        )
        parent_conn, child_conn = SPAWN.Pipe(duplex=False)
        process = SPAWN.Process(
            target=run_reader,
            args=(spec, ring.lock, child_conn, os.getpid(), self._wake),
            name=f"edgewatch-capture-{camera.id}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return _ProcessReader(process, parent_conn)

    def _gstreamer(self) -> GstPipeline | None:
        camera = self._camera
        if camera.decoder is not Decoder.JETSON:
            return None
        codec = camera.codec or VideoCodec.H264
        return jetson_pipeline(camera.url.reveal(), codec, self._capture.read_timeout_s)


class ReaderSupervisor:
    """The reader of one camera, its restarts and the camera's state."""

    def __init__(
        self, camera: CameraConfig, capture: CaptureConfig, frames: FrameStore, launch: Launcher
    ) -> None:
        self.camera_id = camera.id
        self._camera = camera
        self._capture = capture
        self._frames = frames
        self._launch = launch
        self._reader: _Reader | None = None
        self._state = CameraState.DOWN if not camera.enabled else CameraState.STARTING
        # The stream's frame size (height, width) as the reader last reported it.
        self._frame_hw: tuple[int, int] | None = None
        self._last_error: str | None = None if camera.enabled else "disabled"
        self._changes: list[StateChange] = []
        self._restarts = 0
        # Slot size the next reader's ring needs after a too-large frame (None: as it is).
        self._grow_to: int | None = None
        self._respawn_at: float | None = None
        self._respawn_delay = capture.reconnect_initial_s
        self._failing_since: float | None = None
        # frames_read when a silent heartbeat ended STREAMING (None: it did not).
        self._silent_since_frames: int | None = None
        self._stopped = False

    # -- status ---------------------------------------------------------------------------

    @property
    def state(self) -> CameraState:
        return self._state

    @property
    def frame_hw(self) -> tuple[int, int] | None:
        """(height, width) of the stream's frames; None before it first streamed."""
        return self._frame_hw

    @property
    def last_error(self) -> str | None:
        """Why the camera is not streaming, credentials masked; None while streaming."""
        return self._last_error

    @property
    def pid(self) -> int | None:
        """Process (or thread) id of the current reader, for diagnostics."""
        reader = self._reader  # read once: stop() may clear it from another thread
        return reader.running.pid if reader is not None else None

    @property
    def restarts(self) -> int:
        """Readers replaced by the watchdog or restarted for a larger ring, since construction."""
        return self._restarts

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the reader; returns at once (the first frame comes a few hundred ms later)."""
        if not self._camera.enabled or self._reader is not None or self._stopped:
            return
        self._set_state(CameraState.STARTING, None, force=True)
        self._spawn()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the reader and free the ring. Idempotent; leaves no process or segment."""
        if self._stopped:
            return
        self._stopped = True
        self._kill_reader(timeout)
        self._frames.close()
        self._set_state(CameraState.DOWN, "stopped")

    def poll(self) -> list[StateChange]:
        """Drain reader events, run the watchdog, return state changes since the last call."""
        reader = self._reader
        if reader is not None and not self._stopped:
            self._drain(reader)
            self._watchdog(reader, time.time())
        elif self._respawn_at is not None and time.time() >= self._respawn_at:
            self._respawn_at = None
            self._spawn()
        self._check_down(time.time())
        changes, self._changes = self._changes, []
        return changes

    # -- the reader process ---------------------------------------------------------------

    def _spawn(self) -> None:
        running = self._launch(self._grow_to)
        if running is None:
            return
        self._grow_to = None
        self._reader = _Reader(running, started=time.time())
        self._silent_since_frames = None
        log.debug("reader started", extra={"camera": self.camera_id, "pid": running.pid})

    def _kill_reader(self, timeout: float) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.running.stop(timeout)

    def _drain(self, reader: _Reader) -> None:
        for _ in range(_EVENTS_PER_POLL):
            try:
                if not reader.running.events.poll():
                    return
                event = reader.running.events.recv()
            except (EOFError, OSError):
                return
            self._on_event(event)

    def _on_event(self, event: ReaderEvent) -> None:
        extra = {"camera": self.camera_id}
        if isinstance(event, (Streaming, Reconnecting)):
            self._silent_since_frames = None
        if isinstance(event, Streaming):
            self._failing_since = None
            self._respawn_delay = self._capture.reconnect_initial_s
            self._frame_hw = (event.height, event.width)
            self._set_state(CameraState.STREAMING, None, width=event.width, height=event.height)
        elif isinstance(event, Reconnecting):
            self._failing_since = self._failing_since or time.time()
            if self._state is CameraState.DOWN:
                self._last_error = event.reason
            else:
                self._set_state(CameraState.RECONNECTING, event.reason, retry_in_s=event.retry_in_s)
        elif isinstance(event, FrameTooLarge):
            self._grow_to = capacity_for(event.width, event.height)
            log.info(
                "frame larger than the capture buffer; enlarging it",
                extra={**extra, "width": event.width, "height": event.height},
            )
        elif isinstance(event, Notice):
            log.info(event.message, extra=extra)

    # -- watchdog and state ---------------------------------------------------------------

    def _watchdog(self, reader: _Reader, now: float) -> None:
        exitcode = reader.running.exitcode
        if exitcode is None:
            heartbeat = self._frames.heartbeat()
            silent = now - max(heartbeat if heartbeat is not None else now, reader.started)
            if silent <= self._capture.stall_timeout_s:
                self._check_responsive(silent, now)
                return
            reason = f"reader stalled for {silent:.0f} s; restarted"
            self._kill_reader(1.0)
        else:
            self._drain(reader)
            self._kill_reader(1.0)
            if exitcode == EXIT_FRAME_TOO_LARGE and self._grow_to is not None:
                self._restarts += 1
                self._spawn()
                return
            reason = f"reader exited with status {exitcode}; restarting"
        self._restarts += 1
        log.warning("camera reader restarted", extra={"camera": self.camera_id, "reason": reason})
        self._failing_since = self._failing_since or now
        if self._state is CameraState.DOWN:
            self._last_error = reason
        else:
            self._set_state(CameraState.RECONNECTING, reason)
        # Back off respawns too, so a reader that dies at once cannot spin.
        self._respawn_at = now + self._respawn_delay
        self._respawn_delay = min(self._respawn_delay * 2, self._capture.reconnect_max_s)

    def _check_responsive(self, silent: float, now: float) -> None:
        """Stop claiming STREAMING while the heartbeat is silent, and claim it again once the
        same reader beats and reads frames again (a paused process resumes where it was)."""
        frames_read = self._frames.counts().frames_read
        if silent > HEARTBEAT_TIMEOUT_S:
            if self._state is CameraState.STREAMING:
                self._silent_since_frames = frames_read
                self._failing_since = self._failing_since or now
                self._set_state(
                    CameraState.RECONNECTING, f"reader not responding for {silent:.0f} s"
                )
        elif self._silent_since_frames is not None and frames_read > self._silent_since_frames:
            self._silent_since_frames = None
            self._failing_since = None
            self._set_state(CameraState.STREAMING, None)

    def _check_down(self, now: float) -> None:
        down_after = 2 * self._capture.reconnect_max_s
        if (
            self._failing_since is not None
            and self._state is not CameraState.DOWN
            and now - self._failing_since >= down_after
        ):
            self._set_state(
                CameraState.DOWN,
                f"no frame for {now - self._failing_since:.0f} s: {self._last_error}",
            )

    def _set_state(
        self, state: CameraState, reason: str | None, force: bool = False, **details: object
    ) -> None:
        """Change state, queue the change for ``poll`` and log it once (with ``details``)."""
        reason = mask_text(reason) if reason is not None else None
        self._last_error = reason
        if force or state is not self._state:
            self._state = state
            self._changes.append(StateChange(self.camera_id, state, reason))
            # A failure is a warning; starting, streaming and a requested stop are normal.
            level = logging.WARNING if reason is not None and not self._stopped else logging.INFO
            log.log(
                level,
                "camera state",
                extra={"camera": self.camera_id, "state": state.value, "reason": reason, **details},
            )
