"""Structured logging: one logfmt (or JSON) line per event, credentials always masked.

Context goes in ``extra=`` (``log.info("camera reconnecting", extra={"camera": cid})``) so
lines stay machine-parsable; the formatter masks URL credentials in every field as a last
line of defence behind ``CameraConfig.display_url``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Final, TextIO

from daemon.config.secrets import mask_url

# How the parent process logs, for its children (``--log-level``, ``--log-format``).
_LEVEL_ENV: Final = "EDGEWATCH_LOG_LEVEL"
_FORMAT_ENV: Final = "EDGEWATCH_LOG_FORMAT"
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "taskName"}
)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": mask_url(record.getMessage()),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRS and not key.startswith("_"):
            fields[key] = mask_url(value) if isinstance(value, str) else value
    if record.exc_info and record.exc_info[1] is not None:
        fields["error"] = mask_url(f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}")
    return fields


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info logger=edgewatch.capture msg="..." camera=cam1``"""

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in _fields(record).items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            if not text or any(c in text for c in ' "=\t\n'):
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    """Route the root logger to stderr (journald picks it up under systemd).

    The choice is also left in the environment, so that spawned child processes (camera
    readers) log in the same format: ``setup_child_logging``.
    """
    _configure(level, fmt, sys.stderr)
    os.environ[_LEVEL_ENV] = level
    os.environ[_FORMAT_ENV] = fmt


def setup_child_logging(stream: TextIO, **tags: object) -> None:
    """In a child process: log to ``stream`` in the level and format of the parent; ``tags``
    are added to every record (which pipeline worker wrote a line, say)."""
    _configure(os.environ.get(_LEVEL_ENV, "info"), os.environ.get(_FORMAT_ENV, "logfmt"), stream)
    if tags:

        def tag(record: logging.LogRecord) -> bool:
            record.__dict__.update(tags)
            return True

        for handler in logging.getLogger().handlers:
            handler.addFilter(tag)


def _configure(level: str, fmt: str, stream: TextIO) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RepeatLimiter:
    """Lets the first of a run of repeated events be logged, then one per ``window_s`` with
    the count held back in between: a fault that repeats on every batch cannot flood the log
    (or hide everything else in it)."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._next = float("-inf")
        self._held = 0

    def admit(self) -> int | None:
        """None: do not log this one. Otherwise log it, with the returned count of events
        held back since the last logged one."""
        now = self._clock()
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self._window_s
        return held
