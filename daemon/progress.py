"""Progress of a command that runs for more than a few seconds (``detect`` on a folder,
``calib collect``, ``bench backend``).

On a terminal a tqdm bar, with log records routed above it so they do not tear it; when
stderr is a file or a pipe (CI, systemd, a redirect) a bar would only be noise, so an INFO
record every ``LOG_EVERY_S`` seconds instead, and a last one at the end if any was written.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, NoReturn, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger(__name__)

LOG_EVERY_S: Final = 5.0


class Progress:
    """Counts units of work towards an optional ``total``; use as a context manager."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "it",
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        stream = stream if stream is not None else sys.stderr
        self._what = what
        self._total = total
        self._unit = unit
        self._clock = clock
        self._started = clock()
        self._logged = self._started
        self._done = 0
        self._closed = False
        self._stack = contextlib.ExitStack()
        self._bar: tqdm[NoReturn] | None = None
        if stream.isatty():
            self._stack.enter_context(logging_redirect_tqdm())
            self._bar = self._stack.enter_context(
                tqdm(total=total, desc=what, unit=unit, file=stream, dynamic_ncols=True)
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def advance(self, n: int = 1) -> None:
        """Record ``n`` more units done."""
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        if now - self._logged >= LOG_EVERY_S:
            self._logged = now
            self._log("progress")

    def close(self) -> None:
        """Remove the bar, or log the final count if the work took long enough to log any."""
        if self._closed:
            return
        self._closed = True
        if self._bar is None and self._logged > self._started:
            self._log("done")
        self._stack.close()

    def _log(self, msg: str) -> None:
        log.info(
            msg,
            extra={
                "task": self._what,
                "done": self._done,
                "total": self._total,
                "unit": self._unit,
                "elapsed_s": round(self._clock() - self._started, 1),
            },
        )
