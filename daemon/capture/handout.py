"""``FrameHandout``: the daemon's side of one camera's shared-memory frame ring.

It owns the ring and the cross-process lock on its header, hands the newest frame to worker
threads as a zero-copy view (pinned, so the reader writes elsewhere, until they are done),
and keeps a ring it replaced (enlarged for a larger frame, or freed on stop) mapped until
no worker holds a view into it.

Threading contract: ``acquire_latest`` runs on worker threads, everything else on the event
loop thread; ``_guard`` orders them. ``counts``, ``heartbeat`` and ``pending_since`` read
single header words without it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Lock
from typing import Final

import numpy as np
import numpy.typing as npt

from daemon.capture.demand import NOW, DemandForecast
from daemon.capture.frame import FrameMeta
from daemon.capture.protocol import SPAWN
from daemon.capture.ring import OwnedRing
from daemon.capture.state import CaptureCounters

# How long the consumer waits for the cross-process lock before assuming its holder died.
_LOCK_TIMEOUT_S: Final = 0.1


@dataclass(frozen=True, slots=True)
class ReaderRing:
    """What a new reader process needs to attach to the ring."""

    shm_name: str
    capacity: int
    lock: Lock


class FrameHandout:
    """One camera's frame ring, from its creation to the last worker's view of it."""

    def __init__(self, camera_id: str, capacity: int) -> None:
        """``capacity``: bytes per frame slot of the first ring (``ring.capacity_for``)."""
        self.camera_id = camera_id
        self._capacity = capacity
        self._guard = threading.Lock()
        # Header lock shared with the reader; a named semaphore, released (unlinked) on close.
        self._lock: Lock | None = SPAWN.Lock()
        self._owned: OwnedRing | None = None
        # Rings replaced (after a resize) while a consumer still holds a view into them.
        self._retired: list[OwnedRing] = []
        self._pins: dict[int, int] = {}
        self._demand = DemandForecast()  # under the guard
        # Counters and seq of the last ring, continued by the next one.
        self._last_counts = CaptureCounters()
        self._last_seq = 0

    # -- status ---------------------------------------------------------------------------

    def counts(self) -> CaptureCounters:
        """The ring's counters (``restarts`` is 0: the supervisor counts those)."""
        owned = self._owned
        return owned.ring.counts() if owned is not None else self._last_counts

    def heartbeat(self) -> float | None:
        """When the reader last showed it was running, or None without a ring."""
        owned = self._owned
        return owned.ring.heartbeat() if owned is not None else None

    def pending_since(self) -> float | None:
        """Capture time of the newest unconsumed frame, or None when there is nothing new."""
        owned = self._owned
        return owned.ring.pending_since() if owned is not None else None

    # -- the reader's side ----------------------------------------------------------------

    def prepare(self, min_capacity: int | None = None) -> ReaderRing | None:
        """Ready the ring for a new reader: create it, or replace it with one of at least
        ``min_capacity`` bytes per slot, and reset its heartbeat. None once closed.

        Called while no reader runs."""
        with self._guard:
            lock = self._lock
            if lock is None:
                return None
            if self._owned is None or min_capacity is not None:
                self._new_ring(min_capacity or 0)
            self._reclaim_lock(lock)
            owned = self._owned
            assert owned is not None
            owned.ring.touch(time.time())
        return ReaderRing(shm_name=owned.name, capacity=owned.ring.capacity, lock=lock)

    def close(self) -> None:
        """Free the ring and the header lock once no reader runs. Idempotent."""
        with self._guard:
            if self._owned is not None:
                self._last_counts = self._owned.ring.counts()
                self._retire(self._owned)
                self._owned = None
            # Dropping the last reference unlinks the semaphore (/dev/shm/sem.mp-*).
            self._lock = None

    def release_retired(self) -> None:
        """Unmap replaced rings that no worker holds a view into any more."""
        with self._guard:
            if self._retired:
                self._close_retired()

    # -- the workers' side ----------------------------------------------------------------

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

    # -- internals (under the guard) ------------------------------------------------------

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

    def _new_ring(self, min_capacity: int) -> None:
        """Create the ring (again, larger after a too-large frame), continuing counters and seq."""
        self._capacity = max(self._capacity, min_capacity)
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

        No reader is running, so no one else can hold it; a multiprocessing lock may be
        released by any process.
        """
        lock.acquire(timeout=_LOCK_TIMEOUT_S)
        lock.release()

    def _retire(self, owned: OwnedRing) -> None:
        owned.unlink()
        self._retired.append(owned)
        self._close_retired()

    def _close_retired(self) -> None:
        for owned in [o for o in self._retired if id(o) not in self._pins]:
            # BufferError: a frame array outlived its acquire_latest block; retry next poll.
            with contextlib.suppress(BufferError):
                owned.close()
                self._retired.remove(owned)
