"""``edgewatch run --config FILE [--duration S]``: the daemon itself."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.commands.config_file import load_or_report
from daemon.commands.exit_codes import EXIT_USAGE, usage_error


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "run", help="run the daemon", description="Capture, detect and publish until stopped."
    )
    parser.add_argument("--config", required=True, type=Path, help="camera YAML file")
    parser.add_argument(
        "--duration", type=float, default=None, metavar="S", help="stop gracefully after S seconds"
    )
    parser.add_argument(
        "--fps-table", action="store_true", help="print a per-camera fps table every stats interval"
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from daemon.app import serve

    config = load_or_report(args.config)
    if config is None:
        return EXIT_USAGE
    return serve_reporting(lambda: serve(config, args.duration, args.fps_table))


def serve_reporting(serve: Callable[[], int]) -> int:
    """Run ``serve``; what stops the daemon from starting becomes one line each, exit 2."""
    from daemon.app import StartupError
    from daemon.infer.backend import BackendError

    try:
        return serve()
    except BackendError as err:
        return usage_error(f"edgewatch: model: {err}")
    except StartupError as err:
        for problem in err.problems:
            usage_error(f"edgewatch: {problem}")
        return EXIT_USAGE
