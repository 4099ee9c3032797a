"""Loading the ``--config`` file for a subcommand: problems go to stderr, one per line."""

from __future__ import annotations

import sys
from pathlib import Path

from daemon.config.errors import ConfigError
from daemon.config.load import load_config
from daemon.config.model import AppConfig


def load_or_report(path: Path) -> AppConfig | None:
    """The config at ``path``, or None after printing each problem (the caller exits 2)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return None
