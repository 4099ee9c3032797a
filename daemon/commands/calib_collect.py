"""``edgewatch calib collect``: sample calibration frames from the configured cameras."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from daemon.commands.argtypes import positive_int
from daemon.commands.config_file import load_or_report
from daemon.commands.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, usage_error


def register(sub: Any) -> None:
    """Add ``calib collect`` (``calib`` groups the calibration data tools)."""
    calib: argparse.ArgumentParser = sub.add_parser(
        "calib", help="calibration data tools", description="Calibration data tools."
    )
    calib_sub = calib.add_subparsers(dest="calib_command", required=True, metavar="COMMAND")
    collect = calib_sub.add_parser(
        "collect",
        help="sample calibration frames from the configured cameras",
        description="Sample frames from the configured cameras over time, spread across "
        "cameras and brightness, skipping near-duplicates; write JPEGs and manifest.json.",
    )
    collect.add_argument("--config", required=True, type=Path, help="daemon config YAML")
    collect.add_argument("--out", required=True, type=Path, help="output folder")
    collect.add_argument("--frames", required=True, type=positive_int, help="frames to keep")
    collect.add_argument(
        "--interval",
        type=float,
        default=2.0,
        help="seconds between samples of one camera (default 2)",
    )
    collect.add_argument(
        "--max-duration",
        type=float,
        default=600.0,
        help="stop sampling after this many seconds (default 600)",
    )
    collect.set_defaults(handler=_collect)


def _collect(args: argparse.Namespace) -> int:
    from calib.collect import CollectOptions, collect

    config = load_or_report(args.config)
    if config is None:
        return EXIT_USAGE
    if not config.enabled_cameras:
        return usage_error(f"error: {args.config}: no enabled cameras")
    options = CollectOptions(
        frames=args.frames, interval_s=args.interval, max_duration_s=args.max_duration
    )
    written = collect(config, args.out, options)
    print(f"wrote {written} frames and manifest.json to {args.out}")
    return EXIT_OK if written else EXIT_FAILURE
