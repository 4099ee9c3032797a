"""The ``edgewatch`` console script: one subcommand per job.

Each subcommand lives in its own module exposing ``register(subparsers)``; a module imports
its heavy dependencies (ultralytics, tensorrt, torch) only inside its handler, so
``edgewatch --help`` and the daemon itself never load them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Exit codes shared by every subcommand.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def usage_error(message: str) -> int:
    """Report an operator mistake as one line on stderr (never a traceback); ``EXIT_USAGE``."""
    print(message, file=sys.stderr)
    return EXIT_USAGE


_COMMAND_MODULES = (
    "calib.cli",
    "daemon.commands.run",
    "daemon.commands.check_config",
    "daemon.commands.detect",
    "daemon.commands.export",
    "engines.cli",
    "bench.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgewatch", description="Multi-camera YOLOv8 analytics daemon publishing over MQTT."
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="logfmt", choices=["logfmt", "json"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from daemon.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
