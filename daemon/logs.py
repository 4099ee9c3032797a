"""Structured logging: one logfmt (or JSON) line per event, credentials always masked.

Context goes in ``extra=`` (``log.info("camera reconnecting", extra={"camera": cid})``) so
lines stay machine-parsable; the formatter masks URL credentials in every field as a last
line of defence behind ``CameraConfig.display_url``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final

from daemon.config.secrets import mask_url

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
    """Route the root logger to stderr (journald picks it up under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
