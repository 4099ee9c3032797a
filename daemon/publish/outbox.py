"""The publisher's bounded FIFO: a memory deque in front of an optional disk spool.

Order invariant: queue = spool (older) ++ memory (newer). Producers only append to memory
(O(1), never touches the disk, safe on the asyncio loop). The pump thread alone spills the
memory's oldest messages to the spool's tail and takes from the spool's head first, so
replay after an outage is in publish order.

Bounds: memory holds at most ``max_memory`` messages; with a spool the pump spills once
memory is half full, so the memory bound is only hit when the disk cannot keep up. Each bound
drops its oldest messages and counts them.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path

from daemon.publish.message import OutMessage
from daemon.publish.spool import DiskSpool

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, max_memory: int, spool_dir: Path | None, spool_max_bytes: int) -> None:
        if max_memory < 1:
            raise ValueError("the memory queue must hold at least one message")
        self._lock = threading.Lock()
        self._memory: deque[OutMessage] = deque()
        self._max_memory = max_memory
        self._spill_above = max(1, max_memory // 2)
        self._spool_dir = spool_dir
        self._spool_max_bytes = spool_max_bytes
        self._spool: DiskSpool | None = None
        # Mirrors of the spool's state, updated under the lock so ``depth`` is always exact:
        # messages between memory and disk are counted as in transit.
        self._in_transit = 0
        self._disk_pending = 0
        self._disk_bytes = 0
        self.dropped = 0
        self.spooled = 0

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

    # -- pump side (one thread) ----------------------------------------------------------
    def open(self) -> None:
        """Open (and recover) the spool; pump thread, since recovery reads the disk."""
        if self._spool_dir is not None and self._spool is None:
            try:
                self._spool = DiskSpool(self._spool_dir, self._spool_max_bytes)
            except OSError as exc:
                # As for a failing write: degrade to memory-only, never stop the pump.
                log.error(
                    "mqtt spool unavailable; buffering in memory only",
                    extra={"spool_dir": str(self._spool_dir), "error": str(exc)},
                )
                return
            self._mirror_spool()

    def needs_spill(self) -> bool:
        return self._spool is not None and len(self._memory) > self._spill_above

    def spill(self) -> None:
        """Move the memory's oldest messages to the spool until memory is a quarter full."""
        if self._spool is None:
            return
        with self._lock:
            keep = self._spill_above // 2
            chunk = [self._memory.popleft() for _ in range(max(0, len(self._memory) - keep))]
            self._in_transit = len(chunk)
        self._write_spool(chunk)

    def take(self, limit: int) -> list[OutMessage]:
        """Remove and return up to ``limit`` oldest messages (spool before memory)."""
        if limit <= 0:
            return []
        if self._spool is not None and self._spool.pending:
            messages = self._spool.read(limit)
            self._mirror_spool()
            return messages
        with self._lock:
            return [self._memory.popleft() for _ in range(min(limit, len(self._memory)))]

    def count_dropped(self, n: int) -> None:
        with self._lock:
            self.dropped += n

    def sync(self) -> None:
        if self._spool is not None:
            self._spool.sync()

    def close(self) -> None:
        """Persist what is still in memory to the spool (if any) for the next start."""
        if self._spool is None:
            return
        with self._lock:
            chunk = list(self._memory)
            self._memory.clear()
            self._in_transit = len(chunk)
        self._write_spool(chunk)
        self._spool.close()
        self._spool = None

    def _write_spool(self, chunk: list[OutMessage]) -> None:
        assert self._spool is not None
        if not chunk:
            return
        try:
            dropped = self._spool.append(chunk)
            written = len(chunk)
        except OSError as exc:
            # A full or failing disk degrades to memory-only buffering; it never stops the pump.
            log.error("mqtt spool write failed; messages dropped", extra={"error": str(exc)})
            dropped, written = len(chunk), 0
        with self._lock:
            self.spooled += written
            self.dropped += dropped
            self._in_transit = 0
            self._disk_pending = self._spool.pending
            self._disk_bytes = self._spool.size_bytes

    def _mirror_spool(self) -> None:
        spool = self._spool
        if spool is not None:
            with self._lock:
                self._disk_pending = spool.pending
                self._disk_bytes = spool.size_bytes
