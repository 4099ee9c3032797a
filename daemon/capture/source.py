"""``CameraSource``: the daemon's handle on one camera's reader process and frame ring.

Threading contract: ``start``, ``poll``, ``pending_since``, ``counters``, ``want_now`` and
``stop`` are called from the event loop thread; ``acquire_latest`` from worker threads at
the same time. ``poll`` never blocks (a pipe poll, a waitpid and a few header reads).

State rule: STARTING until the first frame, STREAMING while frames arrive, RECONNECTING
while the reader retries or its heartbeat is silent for ``HEARTBEAT_TIMEOUT_S`` (a stopped
or hung process; it is killed after ``stall_timeout_s``), DOWN when the camera is stopped
or disabled, or has kept failing for ``2 * reconnect_max_s`` since its first failure
without a frame in between (the whole backoff ladder failed; 10 s by default). A DOWN
camera keeps retrying and returns to STREAMING by itself.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Lock
from typing import Final

import numpy as np
import numpy.typing as npt

from daemon.capture.demand import NOW, DemandForecast
from daemon.capture.frame import CameraState, CaptureCounters, FrameMeta, StateChange
from daemon.capture.protocol import (
    EXIT_FRAME_TOO_LARGE,
    HEARTBEAT_TIMEOUT_S,
    FrameTooLarge,
    Notice,
    ReaderEvent,
    ReaderSpec,
    Reconnecting,
    Streaming,
)
from daemon.capture.reader import run_reader
from daemon.capture.ring import OwnedRing, RingCounts, capacity_for
from daemon.config.model import CameraConfig, CaptureConfig
from daemon.config.secrets import mask_text

log = logging.getLogger(__name__)

# Never fork: the daemon has threads (and an event loop) that a fork would copy half-way.
_MP = multiprocessing.get_context("spawn")
# How long the consumer waits for the cross-process lock before assuming its holder died.
_LOCK_TIMEOUT_S: Final = 0.1
_EVENTS_PER_POLL: Final = 64


@dataclass(slots=True)
class _Reader:
    """One incarnation of the reader process with its pipe and lock."""

    process: BaseProcess
    conn: Connection
    started: float


class CameraSource:
    """One camera: a reader process feeding a shared-memory newest-frame ring."""

    def __init__(self, camera: CameraConfig, capture: CaptureConfig) -> None:
        self.camera_id = camera.id
        self._camera = camera
        self._capture = capture
        self._guard = threading.Lock()
        # Header lock shared with the reader; a named semaphore, released (unlinked) on stop.
        self._lock: Lock | None = _MP.Lock()
        self._owned: OwnedRing | None = None
        # Rings replaced (after a resize) while a consumer still holds a view into them.
        self._retired: list[OwnedRing] = []
        self._pins: dict[int, int] = {}
        self._demand = DemandForecast()  # under the guard
        self._reader: _Reader | None = None
        self._state = CameraState.DOWN if not camera.enabled else CameraState.STARTING
        self._last_error: str | None = None if camera.enabled else "disabled"
        self._changes: list[StateChange] = []
        self._restarts = 0
        self._last_counts = RingCounts(0, 0, 0, 0)
        self._last_seq = 0
        self._capacity = capacity_for(capture.max_width, capture.max_height)
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
    def last_error(self) -> str | None:
        """Why the camera is not streaming, credentials masked; None while streaming."""
        return self._last_error

    @property
    def pid(self) -> int | None:
        """Process id of the current reader, for diagnostics."""
        reader = self._reader  # read once: stop() may clear it from another thread
        if reader is None:
            return None
        try:
            return reader.process.pid
        except ValueError:  # the process object was closed meanwhile
            return None

    def counters(self) -> CaptureCounters:
        counts = self._owned.ring.counts() if self._owned is not None else self._last_counts
        return CaptureCounters(
            frames_read=counts.frames_read,
            frames_dropped=counts.frames_dropped,
            reconnects=counts.reconnects,
            restarts=self._restarts,
            frames_corrupt=counts.frames_corrupt,
        )

    def pending_since(self) -> float | None:
        """Capture time of the newest unconsumed frame, or None when there is nothing new."""
        owned = self._owned
        return owned.ring.pending_since() if owned is not None else None

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
        with self._guard:
            if self._owned is not None:
                self._last_counts = self._owned.ring.counts()
                self._retire(self._owned)
                self._owned = None
            # Dropping the last reference unlinks the semaphore (/dev/shm/sem.mp-*).
            self._lock = None
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
        if self._retired:
            self._close_retired()
        changes, self._changes = self._changes, []
        return changes

    # -- frames ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def acquire_latest(self) -> Iterator[tuple[FrameMeta, npt.NDArray[np.uint8]] | None]:
        """Yield the newest unconsumed frame as a zero-copy HxWx3 BGR view, or None.

        The frame stays pinned (the reader writes elsewhere) until the block exits and is
        marked consumed. Do not keep the array, or anything viewing it, past the block.
        """
        with self._guard:
            owned, lock = self._owned, self._lock
            if owned is None or lock is None or not lock.acquire(timeout=_LOCK_TIMEOUT_S):
                info = None
            else:
                try:
                    info = owned.ring.pin_latest()
                finally:
                    lock.release()
                if info is not None:
                    owned.ring.expect_demand(self._demand.taken(time.time()))
                else:
                    # Asked for a frame and there was none: that is a miss too.
                    self._want_now_locked()
            if info is not None and owned is not None:
                self._pins[id(owned)] = self._pins.get(id(owned), 0) + 1
        if info is None or owned is None:
            yield None
            return
        frame = owned.ring.view(info.slot, info.height, info.width)
        meta = FrameMeta(
            camera_id=self.camera_id,
            seq=info.seq,
            capture_ts=info.capture_ts,
            width=info.width,
            height=info.height,
        )
        try:
            yield meta, frame
        finally:
            del frame
            self._unpin(owned)

    def want_now(self) -> None:
        """A forecast missed: have the reader convert its frames again until the next take."""
        with self._guard:
            self._want_now_locked()

    def _want_now_locked(self) -> None:
        self._demand.miss()
        if self._owned is not None:
            self._owned.ring.expect_demand(NOW)

    def _unpin(self, owned: OwnedRing) -> None:
        with self._guard:
            lock = self._lock
            if owned is self._owned and lock is not None and lock.acquire(timeout=_LOCK_TIMEOUT_S):
                try:
                    owned.ring.unpin()
                finally:
                    lock.release()
            self._pins[id(owned)] -= 1
            if not self._pins[id(owned)]:
                del self._pins[id(owned)]
            self._close_retired()

    # -- internals ------------------------------------------------------------------------

    def _spawn(self) -> None:
        with self._guard:
            lock = self._lock
            if lock is None:
                return
            if self._owned is None or self._grow_to is not None:
                self._new_ring()
            self._reclaim_lock(lock)
            owned = self._owned
            assert owned is not None
            owned.ring.touch(time.time())
        spec = ReaderSpec(
            camera_id=self.camera_id,
            url=self._camera.url,
            max_fps=self._camera.max_fps,
            open_timeout_s=self._capture.open_timeout_s,
            read_timeout_s=self._capture.read_timeout_s,
            reconnect_initial_s=self._capture.reconnect_initial_s,
            reconnect_max_s=self._capture.reconnect_max_s,
            shm_name=owned.name,
            capacity=owned.ring.capacity,
        )
        parent_conn, child_conn = _MP.Pipe(duplex=False)
        process = _MP.Process(
            target=run_reader,
            args=(spec, lock, child_conn, os.getpid()),
            name=f"edgewatch-capture-{self.camera_id}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        self._reader = _Reader(process=process, conn=parent_conn, started=time.time())
        self._silent_since_frames = None
        log.debug("reader started", extra={"camera": self.camera_id, "pid": process.pid})

    def _new_ring(self) -> None:
        """Create the ring (again, larger after a too-large frame), continuing counters and seq."""
        if self._grow_to is not None:
            self._capacity = max(self._capacity, self._grow_to)
            self._grow_to = None
        previous = self._owned
        if previous is not None:
            self._last_counts = previous.ring.counts()
            self._last_seq = previous.ring.latest_seq()
        owned = OwnedRing(self._capacity)
        owned.ring.init_header(self._last_counts, self._last_seq)
        self._owned = owned
        if previous is not None:
            self._retire(previous)

    @staticmethod
    def _reclaim_lock(lock: Lock) -> None:
        """Free the header lock if a killed reader died holding it.

        Called with the guard held and no reader running, so no one else can hold it; a
        multiprocessing lock may be released by any process.
        """
        lock.acquire(timeout=_LOCK_TIMEOUT_S)
        lock.release()

    def _retire(self, owned: OwnedRing) -> None:
        owned.unlink()
        self._retired.append(owned)
        self._close_retired()

    def _close_retired(self) -> None:
        """Unmap replaced rings once no consumer holds a view into them."""
        for owned in [o for o in self._retired if id(o) not in self._pins]:
            # BufferError: a frame array outlived its acquire_latest block; retry next poll.
            with contextlib.suppress(BufferError):
                owned.close()
                self._retired.remove(owned)

    def _drain(self, reader: _Reader) -> None:
        for _ in range(_EVENTS_PER_POLL):
            try:
                if not reader.conn.poll():
                    return
                event: ReaderEvent = reader.conn.recv()
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

    def _watchdog(self, reader: _Reader, now: float) -> None:
        owned = self._owned
        exitcode = reader.process.exitcode
        if exitcode is None:
            heartbeat = owned.ring.heartbeat() if owned is not None else now
            silent = now - max(heartbeat, reader.started)
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
        frames_read = self._owned.ring.counts().frames_read if self._owned is not None else 0
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

    def _kill_reader(self, timeout: float) -> None:
        reader, self._reader = self._reader, None
        if reader is None:
            return
        process = reader.process
        if process.exitcode is None:
            process.terminate()
            process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join(timeout)
        process.close()
        reader.conn.close()

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
