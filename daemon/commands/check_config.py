"""``edgewatch check-config FILE``: validate a config file without starting anything.

Exit status 0 with a one-line summary on stdout, or 2 with one line per problem on stderr.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from daemon.cli import EXIT_OK
from daemon.config.load import load_config_or_exit
from daemon.config.model import AppConfig


def register(subparsers: Any) -> None:
    """Add the ``check-config`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check-config",
        help="validate a config file and print a summary",
        description="Validate a config file: exit 0 and print a summary, or exit 2 and print "
        "one line per problem (file:line: key: cause).",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="YAML config file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler: load ``args.file`` (exits with status 2 on problems) and print the summary."""
    config = load_config_or_exit(args.file)
    print(summary(config))
    return EXIT_OK


def summary(config: AppConfig) -> str:
    """``OK: 4 cameras (4 enabled), model ..., broker host:port``"""
    model = config.model
    mqtt = config.mqtt
    tls = " (TLS)" if mqtt.tls is not None else ""
    cameras = f"{len(config.cameras)} camera{'' if len(config.cameras) == 1 else 's'}"
    return (
        f"OK: {cameras} ({len(config.enabled_cameras)} enabled), "
        f"model {model.path} ({model.backend.value}, input {model.input_size}, "
        f"max batch {model.max_batch}), broker {mqtt.host}:{mqtt.port}{tls}"
    )
