"""``edgewatch export --weights X.pt [--imgsz 640] [--out Y.onnx] [--opset N] [--uint8-input]``.

Needs the ``export`` extra (Ultralytics + PyTorch) for ``.pt`` weights. ``--weights M.onnx
--uint8-input`` only rewrites an existing ONNX's input and needs nothing extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from daemon.commands.exit_codes import EXIT_OK, usage_error


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "export",
        help="export YOLOv8 weights to ONNX",
        description="Export Ultralytics YOLOv8 weights to an ONNX model with a dynamic batch "
        "and the class names in its metadata.",
    )
    parser.add_argument(
        "--weights", required=True, type=Path, help=".pt weights (or .onnx with --uint8-input)"
    )
    parser.add_argument("--imgsz", type=int, default=640, help="input size (default 640)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output .onnx (default: beside the weights)"
    )
    parser.add_argument(
        "--opset", type=int, default=None, help="ONNX opset (default: Ultralytics' choice)"
    )
    parser.add_argument(
        "--uint8-input",
        action="store_true",
        help="take uint8 RGB NHWC and normalise inside the graph (GPU backends)",
    )
    parser.set_defaults(handler=_export)


def _default_out(weights: Path, uint8_input: bool) -> Path:
    return weights.with_suffix(".uint8.onnx" if uint8_input else ".onnx")


def _export(args: argparse.Namespace) -> int:
    from engines.export import ExportError, add_uint8_input_file, export_onnx

    weights: Path = args.weights
    out: Path = args.out or _default_out(weights, args.uint8_input)
    try:
        if weights.suffix.lower() == ".onnx":
            if not args.uint8_input:
                return usage_error(
                    f"edgewatch export: {weights} is already ONNX (use --uint8-input to "
                    "rewrite its input)"
                )
            add_uint8_input_file(weights, out)
        else:
            export_onnx(
                weights, out, imgsz=args.imgsz, opset=args.opset, uint8_input=args.uint8_input
            )
    except ExportError as err:  # includes the missing-extra hint (ExportDependencyError)
        return usage_error(f"edgewatch export: {err}")
    print(f"wrote {out}" + (" (uint8 NHWC input)" if args.uint8_input else ""))
    return EXIT_OK
