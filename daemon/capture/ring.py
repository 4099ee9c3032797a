"""The shared-memory newest-frame ring between one reader process and the daemon.

Layout of the segment: a 4 KiB header, then ``SLOTS`` frame slots of ``capacity`` bytes
each. With three slots the writer always finds one that is neither the latest published
frame nor the one the consumer has pinned, so it never waits for the consumer and never
overwrites a frame being read: a slow consumer only ever costs dropped frames, never
latency. Header fields change only under the cross-process lock, held for a few field
writes and never during a frame copy.

This module is imported by the reader process: numpy, the standard library and the
stdlib-only ``state`` module only.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from multiprocessing.synchronize import Lock
from typing import Final

import numpy as np
import numpy.typing as npt

from daemon.capture.state import CaptureCounters

SLOTS: Final = 3
HEADER_BYTES: Final = 4096
# Frame slots start on cache-line boundaries so OpenCV and numpy copies stay aligned.
_ALIGN: Final = 64
_SHM_DIR: Final = "/dev/shm"

# int64 header fields
_LATEST_SLOT: Final = 0
_LATEST_SEQ: Final = 1
_CONSUMED_SEQ: Final = 2
_PINNED_SLOT: Final = 3
_FRAMES_READ: Final = 4
_FRAMES_DROPPED: Final = 5
_RECONNECTS: Final = 6
_CORRUPT: Final = 7
_SLOT_INTS: Final = 8  # per slot: seq, height, width
_N_INTS: Final = _SLOT_INTS + 3 * SLOTS
# float64 header fields, after the ints
_HEARTBEAT: Final = 0
_SLOT_TS: Final = 1  # per slot: capture_ts
_DEMAND_AT: Final = _SLOT_TS + SLOTS  # see daemon/capture/demand.py
_N_FLOATS: Final = _DEMAND_AT + 1

Frame = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class SlotInfo:
    slot: int
    seq: int
    capture_ts: float
    width: int
    height: int


def capacity_for(width: int, height: int) -> int:
    """Slot size in bytes for a BGR frame of ``width`` x ``height``, aligned."""
    raw = width * height * 3
    return (raw + _ALIGN - 1) // _ALIGN * _ALIGN


class FrameRing:
    """One camera's ring, over a mapping created by the daemon or attached by the reader."""

    def __init__(self, buf: memoryview, capacity: int, lock: Lock | None = None) -> None:
        """``lock`` guards the header on the reader side; the daemon passes its own lock
        to ``pin_latest``/``unpin`` callers instead (it replaces it on stop)."""
        self.capacity = capacity
        self._writer_lock = lock
        self._buf = buf
        self._ints = np.frombuffer(buf, dtype=np.int64, count=_N_INTS)
        self._floats = np.frombuffer(buf, dtype=np.float64, count=_N_FLOATS, offset=_N_INTS * 8)

    def detach(self) -> None:
        """Drop this object's own views of the buffer so the mapping can be closed."""
        self._ints = np.zeros(_N_INTS, dtype=np.int64)
        self._floats = np.zeros(_N_FLOATS, dtype=np.float64)
        self._buf = memoryview(b"")
        self.capacity = 0

    @staticmethod
    def segment_size(capacity: int) -> int:
        return HEADER_BYTES + SLOTS * capacity

    # -- both sides -------------------------------------------------------------------

    def view(self, slot: int, height: int, width: int) -> Frame:
        """HxWx3 uint8 view of ``slot``; the caller ensures ``h*w*3 <= capacity``."""
        offset = HEADER_BYTES + slot * self.capacity
        flat = np.frombuffer(self._buf, dtype=np.uint8, count=height * width * 3, offset=offset)
        return flat.reshape(height, width, 3)

    def heartbeat(self) -> float:
        return float(self._floats[_HEARTBEAT])

    def latest_seq(self) -> int:
        return int(self._ints[_LATEST_SEQ])

    def counts(self) -> CaptureCounters:
        """Counter snapshot; read without the lock (each field is one aligned word).

        ``restarts`` is 0: the daemon counts reader restarts, the ring does not."""
        ints = self._ints
        return CaptureCounters(
            frames_read=int(ints[_FRAMES_READ]),
            frames_dropped=int(ints[_FRAMES_DROPPED]),
            reconnects=int(ints[_RECONNECTS]),
            frames_corrupt=int(ints[_CORRUPT]),
        )

    def pending_since(self) -> float | None:
        """Capture time of the newest unconsumed frame; a lock-free hint for deadlines."""
        ints = self._ints
        slot = int(ints[_LATEST_SLOT])
        if slot < 0 or ints[_LATEST_SEQ] <= ints[_CONSUMED_SEQ]:
            return None
        return float(self._floats[_SLOT_TS + slot])

    # -- daemon side ------------------------------------------------------------------

    def init_header(self, counts: CaptureCounters, last_seq: int) -> None:
        """Start a fresh ring that continues the counters and seq of a previous one."""
        self._ints[:] = 0
        self._floats[:] = 0.0
        self._ints[_LATEST_SLOT] = -1
        self._ints[_PINNED_SLOT] = -1
        self._ints[_LATEST_SEQ] = last_seq
        self._ints[_CONSUMED_SEQ] = last_seq
        self._ints[_FRAMES_READ] = counts.frames_read
        self._ints[_FRAMES_DROPPED] = counts.frames_dropped
        self._ints[_RECONNECTS] = counts.reconnects
        self._ints[_CORRUPT] = counts.frames_corrupt
        self.touch(time.time())

    def touch(self, now: float) -> None:
        """Reset the heartbeat (a freshly spawned reader gets the full stall timeout)."""
        self._floats[_HEARTBEAT] = now

    def expect_demand(self, at: float) -> None:
        """Tell the reader when the next take is expected (``demand.NOW``: convert every frame).

        Lock-free: one aligned word, and a stale value only costs a conversion or a frame."""
        self._floats[_DEMAND_AT] = at

    def pin_latest(self) -> SlotInfo | None:
        """Take the newest unconsumed frame: pin its slot and mark it consumed.

        The caller holds the header lock.
        """
        ints = self._ints
        slot = int(ints[_LATEST_SLOT])
        seq = int(ints[_LATEST_SEQ])
        if slot < 0 or seq <= ints[_CONSUMED_SEQ]:
            return None
        ints[_PINNED_SLOT] = slot
        ints[_CONSUMED_SEQ] = seq
        base = _SLOT_INTS + 3 * slot
        return SlotInfo(
            slot=slot,
            seq=int(ints[base]),
            capture_ts=float(self._floats[_SLOT_TS + slot]),
            height=int(ints[base + 1]),
            width=int(ints[base + 2]),
        )

    def unpin(self) -> None:
        """Release the pinned slot; the caller holds the lock."""
        self._ints[_PINNED_SLOT] = -1

    # -- reader side ------------------------------------------------------------------

    @property
    def _lock(self) -> Lock:
        if self._writer_lock is None:
            raise RuntimeError("this ring view was attached without the header lock")
        return self._writer_lock

    def beat(self, now: float) -> None:
        self._floats[_HEARTBEAT] = now

    def demand_at(self) -> float:
        """When the daemon expects to take the next frame (see ``expect_demand``)."""
        return float(self._floats[_DEMAND_AT])

    def free_slot(self) -> int:
        """A slot that is neither the latest frame nor pinned by the consumer."""
        with self._lock:
            busy = (int(self._ints[_LATEST_SLOT]), int(self._ints[_PINNED_SLOT]))
        return next(s for s in range(SLOTS) if s not in busy)

    def publish(self, slot: int, seq: int, capture_ts: float, height: int, width: int) -> None:
        """Make ``slot`` the latest frame; an unconsumed predecessor counts as dropped."""
        ints = self._ints
        base = _SLOT_INTS + 3 * slot
        with self._lock:
            if ints[_LATEST_SLOT] >= 0 and ints[_LATEST_SEQ] > ints[_CONSUMED_SEQ]:
                ints[_FRAMES_DROPPED] += 1
            ints[base] = seq
            ints[base + 1] = height
            ints[base + 2] = width
            self._floats[_SLOT_TS + slot] = capture_ts
            ints[_LATEST_SLOT] = slot
            ints[_LATEST_SEQ] = seq
            ints[_FRAMES_READ] += 1

    def count_skipped(self) -> None:
        """A frame was grabbed but not converted: read, and dropped unseen."""
        with self._lock:
            self._ints[_FRAMES_READ] += 1
            self._ints[_FRAMES_DROPPED] += 1

    def count_reconnect(self) -> None:
        with self._lock:
            self._ints[_RECONNECTS] += 1

    def count_corrupt(self) -> None:
        with self._lock:
            self._ints[_CORRUPT] += 1


class OwnedRing:
    """The daemon's side: creates the segment and is the only one that unlinks it."""

    def __init__(self, capacity: int) -> None:
        self._shm = SharedMemory(create=True, size=FrameRing.segment_size(capacity))
        self.name = self._shm.name
        buf = self._shm.buf
        assert buf is not None
        self.ring = FrameRing(buf, capacity)
        self._unlinked = False

    def unlink(self) -> None:
        """Remove the /dev/shm entry; mappings stay valid until ``close``."""
        if not self._unlinked:
            self._unlinked = True
            self._shm.unlink()

    def close(self) -> None:
        """Unlink and unmap.

        Raises ``BufferError`` while a frame view handed out by ``view`` is still referenced
        (the segment is unlinked anyway; only the mapping stays until the view is freed).
        """
        self.unlink()
        self.ring.detach()
        self._shm.close()


def attach(name: str, capacity: int, lock: Lock) -> FrameRing:
    """Map a ring created by the daemon, from the reader process.

    Maps ``/dev/shm`` directly rather than through ``SharedMemory``: on Python < 3.13 that
    would register the segment with the resource tracker a second time, and the tracker
    would then complain about or unlink a segment the daemon still owns.
    """
    fd = os.open(os.path.join(_SHM_DIR, name.lstrip("/")), os.O_RDWR)
    try:
        mapping = mmap.mmap(fd, FrameRing.segment_size(capacity))
    finally:
        os.close(fd)
    return FrameRing(memoryview(mapping), capacity, lock)
