"""Spill and replay throughput of the MQTT disk spool (``daemon.publish.spool``), in msg/s.

Spill: ``append`` in chunks of ``--chunk`` messages, as the pump spills a half-full memory
queue. Replay: ``read`` of one in-flight window (64) and ``release`` of it, as the pump does
once each window is acknowledged. Payloads are detections-sized (``--size`` bytes).

    python -m bench.spool_throughput --messages 200000 --dir /var/tmp/spool-bench
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from daemon.publish.message import OutMessage
from daemon.publish.spool import DiskSpool

_ROOT = "edgewatch/bench/"
_WINDOW = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=400, help="payload bytes")
    parser.add_argument("--chunk", type=int, default=2_500, help="messages per spill")
    parser.add_argument("--dir", type=Path, default=None, help="spool folder (default: a temp)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="spool-bench-"))
    folder = base / "spool"
    shutil.rmtree(folder, ignore_errors=True)
    payload = b"x" * args.size
    messages = [OutMessage(f"{_ROOT}cam{i % 8}/detections", payload) for i in range(args.chunk)]
    spool = DiskSpool(folder, max_bytes=2**40, topic_root=_ROOT)
    started = time.perf_counter()
    for _ in range(args.messages // args.chunk):
        spool.append(messages)
    spool.sync()
    spill_s = time.perf_counter() - started
    total = spool.pending
    started = time.perf_counter()
    replayed = 0
    while True:
        rows = spool.read(_WINDOW)
        if not rows:
            break
        spool.release(rows[-1][0])
        replayed += len(rows)
    replay_s = time.perf_counter() - started
    spool.close()
    print(
        f"{total} messages of {args.size} B: spill {total / spill_s:,.0f} msg/s "
        f"(chunks of {args.chunk}), replay {replayed / replay_s:,.0f} msg/s (windows of {_WINDOW})"
    )
    if args.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
