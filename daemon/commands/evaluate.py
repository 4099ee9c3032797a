"""``edgewatch evaluate``: mAP of a model on labelled images, or its agreement with a
reference model, through the daemon's own pre- and post-processing."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.commands.exit_codes import EXIT_OK, usage_error

if TYPE_CHECKING:
    from daemon.postprocess.match import Agreement


def register(sub: Any) -> None:
    """Add the ``evaluate`` subcommand."""
    from calib.kernels import QDQ_KERNELS

    p: argparse.ArgumentParser = sub.add_parser(
        "evaluate",
        help="mAP of a model on labelled images, or its agreement with a reference model",
        description="COCO mAP50-95/mAP50 through the daemon's own pre/post-processing (with "
        "--labels), or detection agreement F1 against a reference model (with --reference).",
    )
    p.add_argument("--model", required=True, type=Path, help="ONNX model")
    p.add_argument("--images", required=True, type=Path, help="image folder")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--labels", type=Path, help="YOLO label folder")
    mode.add_argument("--reference", type=Path, help="reference (FP32) model for agreement")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the result as JSON")
    p.add_argument(
        "--single-label",
        action="store_true",
        help="decode one class per anchor as the daemon does (default: Ultralytics "
        "val's multi-label NMS)",
    )
    p.add_argument(
        "--conf",
        type=float,
        default=None,
        help="confidence threshold (default 0.001 for mAP, 0.25 for agreement)",
    )
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = auto)")
    p.add_argument(
        "--qdq-kernels",
        choices=QDQ_KERNELS,
        default="integer",
        help="run a Q/DQ model in ORT's integer kernels (default; results depend on the "
        "CPU's instruction set) or in float fake-quantization (see docs/int8.md)",
    )
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from calib.evaluate import EvalSettings, EvaluationError, evaluate_file
    from calib.kernels import runtime_record
    from calib.labels import LabelError
    from daemon.infer.backend import BackendError
    from daemon.stills import ImageError, list_images

    for path in (args.model, args.reference):
        if path is not None and not path.is_file():
            return usage_error(f"error: model not found: {path}")
    if args.labels is not None and not args.labels.is_dir():
        return usage_error(f"error: label folder not found: {args.labels}")
    try:
        images = list_images([args.images])
        if args.labels is not None:
            settings = EvalSettings(
                conf=0.001 if args.conf is None else args.conf, multi_label=not args.single_label
            )
            report = evaluate_file(
                args.model,
                images,
                args.labels,
                threads=args.threads,
                fuse_qdq=args.qdq_kernels == "integer",
                settings=settings,
            )
            result: dict[str, Any] = asdict(report)
            line = report.line()
        else:
            counts = _agreement(args, images)
            result = {
                **asdict(counts),
                "f1": counts.f1,
                "precision": counts.precision,
                "recall": counts.recall,
                "images": len(images),
            }
            line = (
                f"agreement F1={counts.f1:.4f} precision={counts.precision:.4f} "
                f"recall={counts.recall:.4f}"
            )
    except (ImageError, LabelError, EvaluationError, BackendError) as exc:
        return usage_error(f"error: {exc}")
    runtime = runtime_record()
    print(f"{line} ({runtime.label(args.qdq_kernels)})")
    if args.json is not None:
        run = {"model": str(args.model), "qdq_kernels": args.qdq_kernels}
        args.json.write_text(json.dumps({**run, **result, "runtime": asdict(runtime)}, indent=1))
    return EXIT_OK


def _agreement(args: argparse.Namespace, images: list[Path]) -> Agreement:
    """Detection agreement of ``args.model`` with ``args.reference`` on ``images``."""
    from calib.evaluate import evaluate_agreement
    from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(
        args.model,
        intra_op_threads=args.threads,
        max_batch=8,
        fuse_qdq=args.qdq_kernels == "integer",
    )
    try:
        reference = OnnxRuntimeBackend(args.reference, intra_op_threads=args.threads, max_batch=8)
        try:
            return evaluate_agreement(
                backend, reference, images, conf=0.25 if args.conf is None else args.conf
            )
        finally:
            reference.close()
    finally:
        backend.close()
