"""``edgewatch run --config FILE [--duration S]``: the daemon itself."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from daemon.cli import usage_error


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
    from daemon.app import StartupError, serve
    from daemon.config.load import load_config_or_exit
    from daemon.infer.backend import BackendError

    config = load_config_or_exit(args.config)
    try:
        return serve(config, args.duration, args.fps_table)
    except BackendError as err:
        return usage_error(f"edgewatch: model: {err}")
    except StartupError as err:
        return usage_error(f"edgewatch: {err}")
