"""``edgewatch check-config FILE``: validate a config file without starting anything.

Besides the file itself it checks what ``run`` would otherwise find only after starting:
the model file (a well-formed ONNX model with a YOLOv8 head and usable class names) and the
cameras' class filters against those names. Exit status 0 with a one-line summary on
stdout, or 2 with one line per problem on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from daemon.commands.config_file import load_or_report
from daemon.commands.exit_codes import EXIT_OK, EXIT_USAGE
from daemon.config.model import AppConfig


def register(subparsers: Any) -> None:
    """Add the ``check-config`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check-config",
        help="validate a config file and print a summary",
        description="Validate a config file and the model it names: exit 0 and print a "
        "summary, or exit 2 and print one line per problem (file:line: key: cause).",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="YAML config file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler: load ``args.file`` (exits with status 2 on problems) and print the summary."""
    config = load_or_report(args.file)
    if config is None:
        return EXIT_USAGE
    problems = model_problems(config)
    if problems:
        for problem in problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    print(summary(config))
    return EXIT_OK


def model_problems(config: AppConfig) -> list[str]:
    """What the model file says about the config: an unusable model, or class filters naming
    classes it lacks."""
    # Imported here: onnx and the pipeline are heavy and only this check needs them.
    from daemon.infer.backend import BackendError
    from daemon.infer.model_file import class_names_of
    from daemon.track.checks import filter_problems

    try:
        names = class_names_of(config.model.path)
    except BackendError as err:
        return [f"model.path: {err}"]
    return filter_problems(config.enabled_cameras, names)


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
