"""Stopping the helper processes that tests and benchmarks start (broker, RTSP, daemon).

No pytest here: the demo and the benchmarks use it too.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def start_logged(
    command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` with no stdin and its stdout and stderr appended to ``log_path``
    (a file, not a pipe: nobody drains a pipe while it runs, and a full one would stall it).

    ``env`` is the whole environment, as for ``subprocess.Popen``; None inherits ours.
    """
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM and wait up to ``timeout`` (a graceful stop), SIGKILL if it lingers; returns
    the exit status. A process that already exited is only reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL (an abrupt crash) unless it already exited, and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def tail(path: Path, chars: int) -> str:
    """The last ``chars`` characters of a log file; empty when it cannot be read."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
