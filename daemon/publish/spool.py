"""Bounded on-disk FIFO of MQTT messages: append-only segment files, oldest dropped first.

Layout: ``<dir>/seg-<12-digit index>.spool``, each a run of records
``<u32 payload len><u32 crc32(topic + payload)><u16 topic len><topic><payload>``.
Segments are only ever appended to, read front to back, and deleted whole, so a crash can at
worst leave a torn last record, which ``open`` truncates.

Durability (fsync policy): a record is in the OS page cache as soon as ``append`` returns, so
it survives a crash of the daemon. ``sync`` (called by the publisher at most once per
``SYNC_INTERVAL_S`` while spooling) and every segment roll and ``close`` fsync the data, so a
power cut loses at most about one second of spooled messages. The read position inside the
head segment is not persisted: after a crash the already-sent part of that segment is sent
again (at-least-once; subscribers de-duplicate by (camera, seq)).

Only the publisher's pump thread touches a spool: it is not thread-safe by design.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from daemon.publish.message import OutMessage

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct("<IIH")
_PREFIX: Final = "seg-"
_SUFFIX: Final = ".spool"
# Dropping happens a whole segment at a time, so a segment is a small share of the bound.
_SEGMENTS_PER_BOUND: Final = 16
_MIN_SEGMENT_BYTES: Final = 16 * 1024


@dataclass
class _Segment:
    index: int
    path: Path
    records: int = 0
    size: int = 0
    consumed: int = 0  # records already handed out by read()
    read_offset: int = 0


class DiskSpool:
    """FIFO of ``OutMessage`` on disk, at most ``max_bytes`` (oldest segments deleted)."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("spool size bound must be positive")
        self._dir = directory
        self._max_bytes = max_bytes
        self._segment_bytes = max(_MIN_SEGMENT_BYTES, max_bytes // _SEGMENTS_PER_BOUND)
        self._segments: deque[_Segment] = deque()
        self._writer: BinaryIO | None = None
        self._reader: BinaryIO | None = None
        self._dirty = False
        self.pending = 0  # records appended and not yet read (what a restart would replay)
        self.size_bytes = 0
        self._open()

    # -- recovery ------------------------------------------------------------------------
    def _open(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self._dir.glob(f"{_PREFIX}*{_SUFFIX}")):
            try:
                index = int(path.name[len(_PREFIX) : -len(_SUFFIX)])
            except ValueError:
                continue
            seg = _Segment(index, path)
            seg.records, seg.size = _scan(path)
            if seg.records == 0:
                path.unlink()
                continue
            self._segments.append(seg)
            self.pending += seg.records
            self.size_bytes += seg.size
        if self.pending:
            log.info(
                "mqtt spool recovered",
                extra={
                    "spool_dir": str(self._dir),
                    "messages": self.pending,
                    "bytes": self.size_bytes,
                },
            )

    # -- writing -------------------------------------------------------------------------
    def append(self, messages: list[OutMessage]) -> int:
        """Append ``messages`` in order; returns how many old messages the bound dropped."""
        dropped = 0
        for msg in messages:
            topic = msg.topic.encode()
            record = (
                _HEADER.pack(
                    len(msg.payload), zlib.crc32(msg.payload, zlib.crc32(topic)), len(topic)
                )
                + topic
                + msg.payload
            )
            writer = self._writable(len(record))
            writer.write(record)
            tail = self._segments[-1]
            tail.records += 1
            tail.size += len(record)
            self.pending += 1
            self.size_bytes += len(record)
            # Checked per record: the bound holds at every moment, not only after a batch.
            dropped += self._enforce_bound()
        if dropped:
            log.warning("mqtt spool full: dropped oldest messages", extra={"dropped": dropped})
        if messages:
            assert self._writer is not None
            # Hand the data to the OS now: a daemon crash must not lose what was spooled.
            self._writer.flush()
            self._dirty = True
        return dropped

    def _writable(self, record_len: int) -> BinaryIO:
        tail = self._segments[-1] if self._segments else None
        if self._writer is None or tail is None or tail.size + record_len > self._segment_bytes:
            self._roll()
        assert self._writer is not None
        return self._writer

    def _roll(self) -> None:
        self._close_writer()
        index = self._segments[-1].index + 1 if self._segments else 0
        seg = _Segment(index, self._dir / f"{_PREFIX}{index:012d}{_SUFFIX}")
        self._writer = seg.path.open("ab")
        self._segments.append(seg)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            os.fsync(self._writer.fileno())
            self._writer.close()
            self._writer = None
            self._dirty = False

    def _enforce_bound(self) -> int:
        dropped = 0
        while self.size_bytes > self._max_bytes and len(self._segments) > 1:
            seg = self._segments[0]
            lost = seg.records - seg.consumed
            dropped += lost
            self.pending -= lost
            self._delete_head()
        return dropped

    def sync(self) -> None:
        """fsync the segment being written if anything was appended since the last sync."""
        if self._dirty and self._writer is not None:
            os.fsync(self._writer.fileno())
            self._dirty = False

    # -- reading -------------------------------------------------------------------------
    def read(self, limit: int) -> list[OutMessage]:
        """Remove and return up to ``limit`` oldest messages."""
        out: list[OutMessage] = []
        while len(out) < limit and self.pending:
            seg = self._segments[0]
            if seg.consumed == seg.records:
                self._delete_head()
                continue
            if self._reader is None:
                self._reader = seg.path.open("rb")
                self._reader.seek(seg.read_offset)
            while len(out) < limit and seg.consumed < seg.records:
                header = self._reader.read(_HEADER.size)
                payload_len, _crc, topic_len = _HEADER.unpack(header)
                topic = self._reader.read(topic_len).decode()
                out.append(OutMessage(topic, self._reader.read(payload_len)))
                seg.consumed += 1
                seg.read_offset += _HEADER.size + topic_len + payload_len
                self.pending -= 1
            if seg.consumed == seg.records:
                self._delete_head()
        return out

    def _delete_head(self) -> None:
        seg = self._segments.popleft()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if not self._segments and self._writer is not None:
            # The head was also the segment being written; all of it is sent, so no fsync.
            self._writer.close()
            self._writer = None
            self._dirty = False
        seg.path.unlink(missing_ok=True)
        self.size_bytes -= seg.size

    def close(self) -> None:
        """fsync and close; the files stay for the next start to replay."""
        self._close_writer()
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _scan(path: Path) -> tuple[int, int]:
    """Count valid records of a segment; truncate a torn or corrupt tail (crash mid-write)."""
    records = 0
    good = 0
    with path.open("r+b") as f:
        data = f.read()
        while good + _HEADER.size <= len(data):
            payload_len, crc, topic_len = _HEADER.unpack_from(data, good)
            end = good + _HEADER.size + topic_len + payload_len
            body = data[good + _HEADER.size : end]
            if end > len(data) or zlib.crc32(body[topic_len:], zlib.crc32(body[:topic_len])) != crc:
                break
            records += 1
            good = end
        if good != len(data):
            log.warning(
                "mqtt spool segment has a torn tail; truncated",
                extra={"segment": path.name, "bytes_lost": len(data) - good},
            )
            f.truncate(good)
    return records, good
