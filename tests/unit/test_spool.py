"""The SQLite disk spool on its own: at-least-once across reopen, a process killed mid-write,
a full disk, and the size bound."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from daemon.publish.message import OutMessage
from daemon.publish.spool import DiskSpool, SpoolWriteError
from tests.fixtures.data import REPO

ROOT = "edgewatch/node1/"
BATCH = 50


def _messages(n: int, start: int = 0, size: int = 100) -> list[OutMessage]:
    return [
        OutMessage(f"{ROOT}cam/{i}", i.to_bytes(4, "big") * (size // 4))
        for i in range(start, start + n)
    ]


def test_unacknowledged_rows_are_handed_out_again_after_reopen(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, 10_000_000, ROOT)
    assert spool.append(_messages(500)) == 0
    rows = spool.read(3)
    assert [m for _, m in rows] == _messages(3)
    spool.release(rows[0][0])  # only the first one was acknowledged
    spool.close()
    spool = DiskSpool(tmp_path, 10_000_000, ROOT)
    assert spool.pending == 499
    assert [m for _, m in spool.read(1000)] == _messages(499, start=1)
    spool.release(spool.cursor)
    assert spool.size_bytes == 0
    spool.close()


def test_rows_appended_after_the_spool_emptied_are_handed_out(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, 10_000_000, ROOT)
    spool.append(_messages(5))
    assert [m for _, m in spool.read(10)] == _messages(5)
    assert spool.release(spool.cursor) == 5  # every row acknowledged: the table is empty
    spool.append(_messages(3, start=5))
    assert [m for _, m in spool.read(10)] == _messages(3, start=5)
    spool.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from daemon.publish.message import OutMessage
    from daemon.publish.spool import DiskSpool
    spool = DiskSpool(Path(sys.argv[1]), 1 << 30, "edgewatch/node1/")
    batch = [OutMessage(f"edgewatch/node1/cam/{i}", bytes(2000)) for i in range(int(sys.argv[2]))]
    print("ready", flush=True)
    while True:
        spool.append(batch)
    """
)


def test_a_process_killed_mid_write_leaves_whole_batches(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), str(BATCH)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # many appends in, one surely under way
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    spool = DiskSpool(tmp_path, 1 << 30, ROOT)
    rows = spool.read(1 << 30)
    assert rows, "the batches committed before the kill survive"
    assert len(rows) % BATCH == 0, "a torn batch is rolled back as a whole"
    assert spool.rejected == 0
    spool.close()


def test_a_full_disk_rejects_the_whole_batch_and_keeps_the_rest(tiny_disk: Path) -> None:
    spool = DiskSpool(tiny_disk / "spool", 1 << 30, ROOT)
    stored = 0
    error: SpoolWriteError | None = None
    while error is None:
        try:
            spool.append(_messages(20, start=stored, size=400))
            stored += 20
        except SpoolWriteError as exc:
            error = exc
    assert "full" in str(error)
    assert spool.pending == stored
    assert [m for _, m in spool.read(10_000)] == _messages(stored, size=400)
    spool.close()


def test_the_bound_drops_the_oldest(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, 200_000, ROOT)
    dropped = spool.append(_messages(5_000, size=96))  # ~560 kB offered
    assert dropped > 0
    assert spool.size_bytes <= 200_000
    assert spool.pending + dropped == 5_000
    assert [m for _, m in spool.read(10_000)] == _messages(5_000, size=96)[dropped:]
    spool.close()
