"""The ``edgewatch`` console script: one subcommand per job.

Each subcommand lives in its own module under ``daemon/commands/`` exposing
``register(subparsers)``; a module imports its heavy dependencies (ultralytics, tensorrt,
torch, the benchmarks) only inside its handler, so ``edgewatch --help`` and the daemon itself
never load them. Only this layer prints usage errors or chooses the exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from daemon.commands import (
    bench,
    build_engine,
    calib_collect,
    calibrate,
    check_config,
    detect,
    evaluate,
    export,
    run,
)

# In ``edgewatch --help`` order.
_COMMANDS = (
    run,
    check_config,
    detect,
    export,
    calibrate,
    evaluate,
    calib_collect,
    build_engine,
    bench,
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
    for command in _COMMANDS:
        command.register(sub)
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
