"""The publisher's bounded FIFO: a memory deque in front of an optional disk spool.

Order invariant: queue = spool (older) ++ memory (newer). Producers only append to memory
(O(1), never touches the disk, safe on the asyncio loop). The pump thread alone spills the
memory's oldest messages to the spool's tail and takes from the spool's head first, so
replay after an outage is in publish order.

Bounds: memory holds at most ``max_memory`` messages; with a spool the pump spills once
memory is half full, so the memory bound is only hit when the disk cannot keep up. Each bound
drops its oldest messages and counts them.

A spool that cannot be written (disk full, I/O error) is not a reason to stop publishing:
the outbox logs it once and buffers in memory only, while what is already on disk is still
replayed; once that is all sent, spilling is tried again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import deque
from enum import Enum
from pathlib import Path

from daemon.publish.message import OutMessage
from daemon.publish.spool import DiskSpool, SpoolWriteError

log = logging.getLogger(__name__)

# One message taken for sending: the message and its spool row (None: it came from memory).
Taken = tuple[OutMessage, int | None]


class SpoolState(str, Enum):
    """Whether the disk spool is taking messages (exported in /healthz and metrics)."""

    OFF = "off"  # no spool_dir configured
    OK = "ok"
    MEMORY_ONLY = "memory-only"  # a write failed (disk full?); replaying what it holds
    UNAVAILABLE = "unavailable"  # could not be opened or read


class Outbox:
    """Bounded FIFO of ``OutMessage`` (memory, then an optional SQLite spool)."""

    def __init__(
        self, max_memory: int, spool_dir: Path | None, spool_max_bytes: int, topic_root: str
    ) -> None:
        if max_memory < 1:
            raise ValueError("the memory queue must hold at least one message")
        self._lock = threading.Lock()
        self._memory: deque[OutMessage] = deque()
        self._max_memory = max_memory
        self._spill_above = max(1, max_memory // 2)
        self._spool_dir = spool_dir
        self._spool_max_bytes = spool_max_bytes
        self._topic_root = topic_root
        self._spool: DiskSpool | None = None
        self._writable = False
        # Spool rows handed out and not yet acknowledged; the rows below the oldest of them
        # can be deleted.
        self._unacked_rows: set[int] = set()
        self._released_upto: int | None = None
        # Mirrors of the spool's state, updated under the lock so ``depth`` is always exact:
        # messages between memory and disk are counted as in transit.
        self._in_transit = 0
        self._disk_pending = 0
        self._disk_bytes = 0
        self.state = SpoolState.OFF if spool_dir is None else SpoolState.UNAVAILABLE
        self.dropped = 0
        self.spooled = 0
        self.rejected = 0

    # -- producer side (any thread) ------------------------------------------------------
    def put(self, message: OutMessage) -> None:
        with self._lock:
            if len(self._memory) >= self._max_memory:
                self._memory.popleft()
                self.dropped += 1
            self._memory.append(message)

    @property
    def depth(self) -> int:
        """Messages waiting (memory + spool)."""
        with self._lock:
            return len(self._memory) + self._in_transit + self._disk_pending

    @property
    def spool_bytes(self) -> int:
        with self._lock:
            return self._disk_bytes

    def acknowledged(self, row: int | None) -> None:
        """The broker acknowledged a message taken from spool row ``row`` (any thread)."""
        if row is not None:
            with self._lock:
                self._unacked_rows.discard(row)

    # -- pump side (one thread) ----------------------------------------------------------
    def open(self) -> None:
        """Open (and recover) the spool; pump thread, since recovery reads the disk."""
        if self._spool_dir is None or self._spool is not None:
            return
        try:
            self._spool = DiskSpool(self._spool_dir, self._spool_max_bytes, self._topic_root)
        except OSError as exc:
            # As for a failing write: degrade to memory-only, never stop the pump.
            log.error(
                "mqtt spool unavailable; buffering in memory only",
                extra={"spool_dir": str(self._spool_dir), "error": str(exc)},
            )
            return
        self._writable = True
        self.state = SpoolState.OK
        self._mirror_spool()

    def needs_spill(self) -> bool:
        return self._writable and len(self._memory) > self._spill_above

    def spill(self) -> None:
        """Move the memory's oldest messages to the spool until memory is a quarter full."""
        if not self._writable:
            return
        with self._lock:
            keep = self._spill_above // 2
            chunk = [self._memory.popleft() for _ in range(max(0, len(self._memory) - keep))]
            self._in_transit = len(chunk)
        self._write_spool(chunk)

    def take(self, limit: int) -> list[Taken]:
        """Remove and return up to ``limit`` oldest messages (spool before memory)."""
        if limit <= 0:
            return []
        spool = self._spool
        if spool is not None and spool.pending:
            try:
                rows = spool.read(limit)
            except sqlite3.Error as exc:
                self._lose_spool("read", exc)
                rows = []
            with self._lock:
                self._unacked_rows.update(row for row, _ in rows)
            self._mirror_spool()
            if rows:
                return [(message, row) for row, message in rows]
        with self._lock:
            return [(self._memory.popleft(), None) for _ in range(min(limit, len(self._memory)))]

    def release(self) -> None:
        """Delete the spool rows that are acknowledged and older than any unacknowledged."""
        spool = self._spool
        if spool is None:
            return
        with self._lock:
            upto = min(self._unacked_rows) - 1 if self._unacked_rows else spool.cursor
        if upto == self._released_upto:
            return
        try:
            deleted = spool.release(upto)
        except SpoolWriteError as exc:
            # A DELETE needs room in the WAL too: on a full disk it fails like an append.
            if upto == spool.cursor and not spool.pending:
                self._reset_spool(spool)  # nothing left to keep: drop the files, free the room
            else:
                # The rows stay (sent again after a restart: at-least-once); retried next round.
                self._write_failed(exc)
            return
        self._released_upto = upto
        self._mirror_spool()
        if self._writable or not deleted or spool.size_bytes:
            return
        # Everything the spool held is sent and deleted: the disk may have room again.
        self._reset_spool(spool)

    def _reset_spool(self, spool: DiskSpool) -> None:
        try:
            spool.reset()
        except SpoolWriteError as exc:
            self._lose_spool("reset", exc)
            return
        self._released_upto = None
        self._mirror_spool()
        if not self._writable:
            self._writable = True
            self.state = SpoolState.OK
            log.info("mqtt spool writable again", extra={"spool_dir": str(self._spool_dir)})

    def count_dropped(self, n: int) -> None:
        with self._lock:
            self.dropped += n

    def sync(self) -> None:
        if self._spool is not None and self._writable:
            try:
                self._spool.sync()
            except SpoolWriteError as exc:
                self._write_failed(exc)

    def close(self, unacknowledged: list[OutMessage]) -> int:
        """Persist ``unacknowledged`` (first) and what is in memory to the spool for the next
        start; returns how many messages could not be kept (no or unusable spool)."""
        with self._lock:
            memory = list(self._memory)
            self._memory.clear()
            self._in_transit = len(memory) + len(unacknowledged)
        spool = self._spool
        lost = len(memory) + len(unacknowledged)
        if spool is not None:
            try:
                if unacknowledged:
                    spool.requeue(unacknowledged)
                lost -= len(unacknowledged)
                spool.append(memory)
                lost -= len(memory)
            except SpoolWriteError as exc:
                if self._writable:  # else already reported; the stop line counts the loss
                    log.error("mqtt spool write failed at stop", extra={"error": str(exc)})
            spool.close()
            self._spool = None
        with self._lock:
            self.dropped += lost
            self._in_transit = 0
        return lost

    def _write_spool(self, chunk: list[OutMessage]) -> None:
        assert self._spool is not None
        try:
            dropped = self._spool.append(chunk)
        except SpoolWriteError as exc:
            self._write_failed(exc)
            with self._lock:
                # Back in front of memory (they are older); the memory bound drops the oldest.
                self._memory.extendleft(reversed(chunk))
                overflow = max(0, len(self._memory) - self._max_memory)
                for _ in range(overflow):
                    self._memory.popleft()
                self.dropped += overflow
                self._in_transit = 0
            return
        with self._lock:
            self.spooled += len(chunk)
            self.dropped += dropped
            self._in_transit = 0
        self._mirror_spool()

    def _write_failed(self, exc: Exception) -> None:
        if self._writable:
            # Once per failure, not per batch: a full disk stays full for a while.
            log.error(
                "mqtt spool write failed; buffering in memory only until the spool is replayed",
                extra={"spool_dir": str(self._spool_dir), "error": str(exc)},
            )
        self._writable = False
        self.state = SpoolState.MEMORY_ONLY

    def _lose_spool(self, what: str, exc: Exception) -> None:
        log.error(
            "mqtt spool failed; buffering in memory only",
            extra={"spool_dir": str(self._spool_dir), "operation": what, "error": str(exc)},
        )
        spool = self._spool
        self._spool = None
        self._writable = False
        self.state = SpoolState.UNAVAILABLE
        if spool is not None:
            spool.close()
        with self._lock:
            self._unacked_rows.clear()
            self._disk_pending = 0
            self._disk_bytes = 0

    def _mirror_spool(self) -> None:
        spool = self._spool
        if spool is not None:
            with self._lock:
                self._disk_pending = spool.pending
                self._disk_bytes = spool.size_bytes
                self.rejected = spool.rejected
