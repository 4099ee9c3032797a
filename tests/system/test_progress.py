"""Progress of long commands: a bar on a real terminal (a pseudo-terminal here), periodic
log records when stderr is a file."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.progress import LOG_EVERY_S, Progress
from tests.fixtures.data import COCO_EVAL, REPO


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """(controller fd, terminal fd) of a fresh 120x30 pseudo-terminal."""
    controller, term = pty.openpty()
    fcntl.ioctl(term, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    yield controller, term
    os.close(controller)
    os.close(term)


def _read_all(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_without_a_terminal_progress_is_logged_every_few_seconds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [100.0]
    caplog.set_level(logging.INFO, logger="daemon.progress")
    with (
        (tmp_path / "stderr").open("w") as stream,
        Progress("work", total=10, unit="img", stream=stream, clock=lambda: now[0]) as progress,
    ):
        for _ in range(10):
            now[0] += LOG_EVERY_S / 2
            progress.advance()
    assert (tmp_path / "stderr").read_text() == ""
    records = [(r.getMessage(), r.__dict__["done"]) for r in caplog.records]
    assert records == [("progress", n) for n in (2, 4, 6, 8, 10)] + [("done", 10)]


def test_quick_work_without_a_terminal_logs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.progress")
    with (tmp_path / "stderr").open("w") as stream, Progress("work", 3, stream=stream) as p:
        p.advance(3)
    assert not caplog.records


def test_on_a_terminal_a_bar_is_drawn(terminal: tuple[int, int]) -> None:
    controller, term = terminal
    with os.fdopen(os.dup(term), "w") as stream, Progress("work", 4, "img", stream=stream) as p:
        for _ in range(4):
            p.advance()
    shown = _read_all(controller)
    assert "work" in shown
    assert "4/4" in shown


def _command_on_terminal(term: int, *args: str) -> int:
    """Run ``python -m daemon --log-level warning ARGS`` with stderr on the terminal ``term``;
    its exit status."""
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "--log-level", "warning", *args],
        stdout=subprocess.PIPE,
        stderr=term,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    return result.returncode


def test_detect_on_a_folder_shows_a_bar_on_a_terminal(
    terminal: tuple[int, int], tmp_path: Path, model_onnx: Path
) -> None:
    controller, term = terminal
    images = sorted((COCO_EVAL / "images").glob("*.jpg"))[:3]
    folder = tmp_path / "images"
    folder.mkdir()
    for image in images:
        (folder / image.name).symlink_to(image)
    code = _command_on_terminal(
        term, "detect", "--model", str(model_onnx), str(folder),
        "--json", str(tmp_path / "out.json"),
    )  # fmt: skip
    assert code == 0
    shown = _read_all(controller)
    assert "detecting" in shown
    assert "3/3" in shown


def test_bench_backend_shows_a_bar_on_a_terminal(
    terminal: tuple[int, int], model_onnx: Path, videos: list[Path]
) -> None:
    controller, term = terminal
    code = _command_on_terminal(
        term, "bench", "backend", "--model", str(model_onnx), "--batch", "1",
        "--seconds", "0.1", "--imgsz", "320", "--videos", str(videos[0].parent),
    )  # fmt: skip
    assert code == 0
    shown = _read_all(controller)
    assert "measuring" in shown
    assert "2/2" in shown
