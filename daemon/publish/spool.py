"""Bounded on-disk FIFO of MQTT messages in SQLite (WAL mode), oldest dropped first.

Why SQLite (stdlib ``sqlite3``) instead of our own file format: each append is one
transaction, so a crash or a full disk mid-write rolls back to the last whole batch; a full
disk is a clean ``SQLITE_FULL`` error instead of a torn record; recovery after a crash is
SQLite's own WAL replay. Each row also carries a CRC32 of its topic and payload, checked on
every read, so a row damaged on disk is skipped (and counted) instead of being published.

Only topics under the daemon's own ``<prefix>/<node>/`` are replayed: rows for any other
topic (a crafted spool file) are discarded and counted. The directory must not be writable
by group or others, or the spool refuses it (the publisher then buffers in memory only).

Rows are handed out in ``id`` order and deleted only once the broker acknowledged them
(``release``), so after a daemon crash unacknowledged rows are sent again (at-least-once).
``requeue`` puts messages back in front of everything not yet handed out (the in-flight
window at stop).

Durability: ``synchronous=NORMAL`` in WAL mode: a commit survives a daemon crash at once;
``sync`` (the publisher calls it at most once per second while spooling) checkpoints and
fsyncs, so a power cut loses at most about one second of spooled messages.
``locking_mode=EXCLUSIVE`` keeps the WAL index in memory (no ``-shm`` file) and stops a
second daemon from sharing the spool.

Only one thread may use a spool at a time (the publisher's pump, then its ``stop``).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import stat
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from daemon.publish.message import OutMessage

log = logging.getLogger(__name__)

DB_NAME: Final = "spool.sqlite3"
# Dropping at the bound frees this share of it at once, so a full spool does not pay one
# DELETE per appended batch.
_DROP_FRACTION: Final = 16
# AUTOINCREMENT: SQLite otherwise gives a new row the largest id still in the table plus
# one, so once every row is acknowledged and deleted, ids start again at 1, at or below the
# read cursor, and ``read`` (ids above the cursor) would never hand those rows out.
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic BLOB NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    crc INTEGER NOT NULL
)
"""
_ROW_BYTES: Final = "length(topic) + length(payload)"


class SpoolWriteError(OSError):
    """An append was rolled back (disk full, I/O error): nothing of the batch was stored."""


def _crc(topic: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(topic))


def prepare_directory(directory: Path) -> None:
    """Create ``directory`` (0700) or check it: refuse one that group or others can write,
    since whoever can write the spool can make the daemon publish."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = directory.stat().st_mode
    if not stat.S_ISDIR(mode):
        raise NotADirectoryError(f"spool path {directory} is not a directory")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(
            f"spool directory {directory} is writable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); make it 0700"
        )


class DiskSpool:
    """FIFO of ``OutMessage`` on disk holding at most ``max_bytes`` of topic + payload."""

    def __init__(self, directory: Path, max_bytes: int, topic_root: str) -> None:
        if max_bytes <= 0:
            raise ValueError("spool size bound must be positive")
        if not topic_root.endswith("/"):
            raise ValueError("the spool's topic root must end with '/'")
        prepare_directory(directory)
        self._path = directory / DB_NAME
        self._max_bytes = max_bytes
        self._root = topic_root.encode()
        self._db = self._connect()
        count, size, low = self._db.execute(
            f"SELECT count(*), coalesce(sum({_ROW_BYTES}), 0), min(id) FROM messages"
        ).fetchone()
        self.pending = int(count)  # rows not yet handed out by read()
        self.size_bytes = int(size)  # topic + payload bytes of every row still stored
        self.rejected = 0  # rows discarded on read: damaged, or not under the topic root
        self._cursor = (int(low) - 1) if low is not None else 0  # ids <= cursor handed out
        if self.pending:
            log.info(
                "mqtt spool recovered",
                extra={"spool": str(self._path), "messages": self.pending, "bytes": size},
            )

    def _connect(self) -> sqlite3.Connection:
        try:
            return self._open_checked()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise OSError(f"spool {self._path} is in use by another process") from exc
            aside = self._path.with_name(f"{DB_NAME}.corrupt-{int(time.time())}")
            log.error(
                "mqtt spool unreadable; set aside, starting empty",
                extra={"spool": str(self._path), "moved_to": str(aside), "error": str(exc)},
            )
            self._path.replace(aside)
            with contextlib.suppress(FileNotFoundError):
                self._path.with_name(DB_NAME + "-wal").unlink()
            try:
                return self._open_checked()
            except sqlite3.Error as again:
                raise OSError(f"spool {self._path}: {again}") from again

    def _open_checked(self) -> sqlite3.Connection:
        # check_same_thread=False: the pump opens it and stop() closes it after the pump ended.
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {verdict}")
        except BaseException:
            db.close()
            raise
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            raise SpoolWriteError(str(exc)) from exc

    # -- writing -------------------------------------------------------------------------
    def append(self, messages: list[OutMessage]) -> int:
        """Append ``messages`` in order, all or none (``SpoolWriteError``); returns how many
        old messages the bound dropped to make room."""
        if not messages:
            return 0
        rows = [_row(m) for m in messages]
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO messages (topic, payload, qos, retain, crc) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        self.pending += len(rows)
        self.size_bytes += sum(len(r[0]) + len(r[1]) for r in rows)
        dropped = self._enforce_bound() if self.size_bytes > self._max_bytes else 0
        if dropped:
            log.warning("mqtt spool full: dropped oldest messages", extra={"dropped": dropped})
        return dropped

    def requeue(self, messages: list[OutMessage]) -> None:
        """Put ``messages`` (handed out earlier, never acknowledged) back in front of every
        row not yet handed out; rows handed out and not in ``messages`` were acknowledged."""
        with self._transaction() as db:
            freed = db.execute(
                f"DELETE FROM messages WHERE id <= ? RETURNING {_ROW_BYTES}", (self._cursor,)
            ).fetchall()
            (low,) = db.execute("SELECT min(id) FROM messages").fetchone()
            first = (int(low) if low is not None else self._cursor + 1) - len(messages)
            db.executemany(
                "INSERT INTO messages (id, topic, payload, qos, retain, crc)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(first + i, *_row(m)) for i, m in enumerate(messages)],
            )
        self.size_bytes -= sum(n for (n,) in freed)
        self.size_bytes += sum(len(m.topic.encode()) + len(m.payload) for m in messages)
        self.pending += len(messages)
        self._cursor = first - 1

    def _enforce_bound(self) -> int:
        """Delete the oldest rows not handed out until the data is a bit under the bound."""
        excess = self.size_bytes - self._max_bytes + self._max_bytes // _DROP_FRACTION
        freed = dropped = 0
        last = self._cursor
        for row_id, size in self._db.execute(
            f"SELECT id, {_ROW_BYTES} FROM messages WHERE id > ? ORDER BY id", (self._cursor,)
        ):
            if freed >= excess:
                break
            freed += size
            dropped += 1
            last = row_id
        if dropped:
            with self._transaction() as db:
                db.execute("DELETE FROM messages WHERE id > ? AND id <= ?", (self._cursor, last))
            self._cursor = last
            self.pending -= dropped
            self.size_bytes -= freed
        return dropped

    def sync(self) -> None:
        """Checkpoint the WAL into the database file and fsync both."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            raise SpoolWriteError(str(exc)) from exc

    # -- reading -------------------------------------------------------------------------
    def read(self, limit: int) -> list[tuple[int, OutMessage]]:
        """Hand out up to ``limit`` oldest rows not handed out yet, as (row id, message).

        They stay on disk until ``release``; damaged or foreign rows are dropped (counted).
        """
        out: list[tuple[int, OutMessage]] = []
        bad: list[int] = []
        foreign = 0
        while len(out) < limit and self.pending > 0:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, crc FROM messages"
                " WHERE id > ? ORDER BY id LIMIT ?",
                (self._cursor, limit - len(out)),
            ).fetchall()
            if not rows:
                self.pending = 0
                break
            for row_id, topic, payload, qos, retain, crc in rows:
                self._cursor = row_id
                self.pending -= 1
                topic_b, payload_b = bytes(topic), bytes(payload)
                if _crc(topic_b, payload_b) != crc or qos not in (0, 1, 2):
                    bad.append(row_id)
                elif not topic_b.startswith(self._root):
                    bad.append(row_id)
                    foreign += 1
                else:
                    out.append((row_id, OutMessage(topic_b.decode(), payload_b, qos, bool(retain))))
        if bad:
            self._discard(bad, foreign)
        return out

    def _discard(self, row_ids: list[int], foreign: int) -> None:
        self.rejected += len(row_ids)
        with self._transaction() as db:
            for row_id in row_ids:
                for (size,) in db.execute(
                    f"DELETE FROM messages WHERE id = ? RETURNING {_ROW_BYTES}", (row_id,)
                ):
                    self.size_bytes -= size
        log.warning(
            "mqtt spool rows discarded",
            extra={
                "damaged": len(row_ids) - foreign,
                "outside_own_topics": foreign,
                "spool": str(self._path),
            },
        )

    def release(self, upto_id: int) -> int:
        """Delete the rows up to ``upto_id`` (acknowledged by the broker); returns how many."""
        with self._transaction() as db:
            freed = db.execute(
                f"DELETE FROM messages WHERE id <= ? RETURNING {_ROW_BYTES}", (upto_id,)
            ).fetchall()
        self.size_bytes -= sum(n for (n,) in freed)
        return len(freed)

    def reset(self) -> None:
        """Start an empty database in place of this one, whose rows are all acknowledged.

        Deleting rows writes to the WAL, which a full disk refuses; removing the files needs
        no room, and frees it.
        """
        self._db.close()
        for suffix in ("", "-wal", "-shm"):
            self._path.with_name(DB_NAME + suffix).unlink(missing_ok=True)
        try:
            self._db = self._open_checked()
        except sqlite3.Error as exc:
            raise SpoolWriteError(str(exc)) from exc
        self.pending = 0
        self.size_bytes = 0
        self._cursor = 0

    @property
    def cursor(self) -> int:
        """The id of the last row handed out."""
        return self._cursor

    def close(self) -> None:
        """Checkpoint and close; the rows stay for the next start to replay."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()


def _row(message: OutMessage) -> tuple[bytes, bytes, int, int, int]:
    topic = message.topic.encode()
    return topic, message.payload, message.qos, int(message.retain), _crc(topic, message.payload)
