"""``edgewatch calibrate``: quantize a model to Q/DQ INT8, gated on accuracy."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.commands.argtypes import positive_int
from daemon.commands.exit_codes import EXIT_FAILURE, EXIT_OK, usage_error

if TYPE_CHECKING:
    from calib.evaluate import MapReport
    from calib.gate import GateResult

log = logging.getLogger(__name__)
_BENCH_BATCH = 8


def register(sub: Any) -> None:
    """Add the ``calibrate`` subcommand."""
    from calib.gate import GATE_KERNELS, MIN_REFERENCE_MAP
    from calib.kernels import QDQ_KERNELS
    from calib.quantize import DEFAULT_RECIPE, METHODS, RECIPES

    p: argparse.ArgumentParser = sub.add_parser(
        "calibrate",
        help="quantize a model to Q/DQ INT8, gated on accuracy",
        description="Calibrate and quantize a YOLOv8 ONNX model to a Q/DQ INT8 ONNX (valid for "
        "ONNX Runtime CPU and TensorRT). With --labels, evaluate FP32 and INT8 and keep the "
        "INT8 model only when the mAP50-95 drop is within --max-map-drop.",
    )
    p.add_argument("--model", required=True, type=Path, help="FP32 YOLOv8 ONNX model")
    p.add_argument(
        "--images",
        required=True,
        type=Path,
        help="calibration images: a folder, a dataset root or a collect output",
    )
    p.add_argument("--out", required=True, type=Path, help="INT8 model to write")
    p.add_argument("--method", choices=METHODS, default="entropy")
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=DEFAULT_RECIPE,
        help="Q/DQ placement: 'ort-cpu' (Conv and the ops between convs, 7-bit weights) or "
        f"'tensorrt' (Conv inputs only, 8-bit weights); default {DEFAULT_RECIPE} "
        "(see docs/int8.md)",
    )
    p.add_argument("--labels", type=Path, help="YOLO labels of --eval-images (enables the gate)")
    p.add_argument("--eval-images", type=Path, help="evaluation images (with --labels)")
    p.add_argument(
        "--max-map-drop",
        type=float,
        default=1.0,
        help="largest acceptable mAP50-95 drop in points (default 1.0)",
    )
    p.add_argument(
        "--min-fp32-map",
        type=float,
        default=MIN_REFERENCE_MAP,
        help="refuse to gate when the FP32 model scores below this mAP50-95 on the labels "
        f"(default {MIN_REFERENCE_MAP:g}: labels that do not match the images)",
    )
    p.add_argument(
        "--float-block",
        action="append",
        default=None,
        metavar="PREFIX",
        help="node-name prefix to keep in float, repeatable ('decode' = the Detect "
        "head's decode; default: decode only)",
    )
    p.add_argument("--max-images", type=positive_int, help="use at most this many images")
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = auto)")
    p.add_argument(
        "--gate-kernels",
        choices=QDQ_KERNELS,
        default=None,
        help="INT8 score the gate judges: ORT's integer kernels on this CPU or float "
        "fake-quantization (both are reported); default: what the recipe deploys to, "
        + ", ".join(f"{r} {k}" for r, k in sorted(GATE_KERNELS.items())),
    )
    p.set_defaults(handler=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from calib.evaluate import EvaluationError
    from calib.gate import GateError
    from calib.images import CalibrationDataError, list_calibration_images
    from calib.labels import LabelError
    from calib.quantize import DEFAULT_FLOAT_BLOCKS, QuantizeError, QuantizeOptions, quantize
    from daemon.infer.backend import BackendError
    from daemon.stills import ImageError, list_images

    problem = _calibrate_arg_problem(args)
    if problem:
        return usage_error(f"error: {problem}")
    try:
        images = list_calibration_images(args.images)
        eval_images = list_images([args.eval_images]) if args.eval_images else None
    except (CalibrationDataError, ValueError) as exc:
        return usage_error(f"error: {exc}")
    if args.max_images:
        images = images[: args.max_images]
    # The reference is measured before calibrating: labels that measure nothing are an
    # operator error found in seconds, not a PASS (0.0 - 0.0) after minutes of calibration.
    fp32_map = None
    if eval_images is not None:
        try:
            fp32_map = _reference_map(args, eval_images)
        except (EvaluationError, GateError, LabelError, ImageError, BackendError) as exc:
            return usage_error(f"error: {exc}; {args.out} not written")
    options = QuantizeOptions(
        method=args.method,
        recipe=args.recipe,
        float_blocks=tuple(args.float_block) if args.float_block else DEFAULT_FLOAT_BLOCKS,
    )
    # Written beside --out and renamed only when the gate passes: a failed run never
    # leaves (or replaces) a model at --out.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{args.out.name}.", suffix=".tmp", dir=args.out.parent)
    os.close(fd)
    candidate = Path(tmp_name)
    try:
        try:
            record = quantize(args.model, images, candidate, options, str(args.images))
        except QuantizeError as exc:
            return usage_error(f"error: {exc}")
        report: dict[str, Any] = {"model": str(args.model), "int8": asdict(record)}
        if eval_images is not None and fp32_map is not None:
            gate = _run_gate(args, candidate, eval_images, fp32_map)
            report["gate"] = gate.report()
            print(gate.summary())
            if not gate.passed:
                print(
                    f"error: INT8 mAP50-95 drop {gate.drop_points:.2f} points exceeds "
                    f"--max-map-drop {gate.max_drop_points:g}; {args.out} not written",
                    file=sys.stderr,
                )
                return EXIT_FAILURE
        else:
            log.warning("no --labels: the INT8 model is written without an accuracy check")
        from calib.gate import promote

        # mkstemp made the candidate owner-only; the model is no secret.
        candidate.chmod(0o644)
        promote(candidate, args.out)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
        print(
            f"wrote {args.out} ({record.calibration_images} calibration images, "
            f"{record.float_nodes} float nodes)"
        )
        return EXIT_OK
    finally:
        candidate.unlink(missing_ok=True)


def _calibrate_arg_problem(args: argparse.Namespace) -> str | None:
    if not args.model.is_file():
        return f"model not found: {args.model}"
    if (args.labels is None) != (args.eval_images is None):
        return "--labels and --eval-images go together"
    if args.labels is not None and not args.labels.is_dir():
        return f"label folder not found: {args.labels}"
    if not args.out.parent.is_dir():
        return f"output folder does not exist: {args.out.parent}"
    return None


def _reference_map(args: argparse.Namespace, eval_images: list[Path]) -> MapReport:
    """FP32 mAP on the gate's images, refused (``GateError``) when it is implausibly low."""
    from calib.evaluate import evaluate_file
    from calib.gate import check_reference

    report = evaluate_file(args.model, eval_images, args.labels, threads=args.threads)
    check_reference(report, args.min_fp32_map)
    return report


def _run_gate(
    args: argparse.Namespace, candidate: Path, eval_images: list[Path], fp32_map: MapReport
) -> GateResult:
    import numpy as np

    from calib.evaluate import evaluate_file, evaluate_map
    from calib.gate import GATE_KERNELS, GateResult
    from calib.images import iter_letterboxed
    from calib.kernels import runtime_record
    from calib.runtime import interleaved_throughput
    from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend

    fp32 = OnnxRuntimeBackend(args.model, intra_op_threads=args.threads, max_batch=_BENCH_BATCH)
    int8 = OnnxRuntimeBackend(candidate, intra_op_threads=args.threads, max_batch=_BENCH_BATCH)
    try:
        int8_map = evaluate_map(int8, eval_images, args.labels)
        first = next(iter_letterboxed(eval_images[:_BENCH_BATCH], fp32.input_hw, _BENCH_BATCH))
        batch = np.ascontiguousarray(first.images)
        fp32_ips, int8_ips = interleaved_throughput([fp32, int8], batch)
    finally:
        fp32.close()
        int8.close()
    print(
        f"throughput batch {batch.shape[0]}: fp32 {fp32_ips:.1f} img/s, int8 {int8_ips:.1f} img/s"
    )
    fake_quant = evaluate_file(
        candidate, eval_images, args.labels, threads=args.threads, fuse_qdq=False
    )
    return GateResult(
        fp32_map,
        {"integer": int8_map, "fake-quant": fake_quant},
        args.gate_kernels or GATE_KERNELS[args.recipe],
        args.max_map_drop,
        runtime_record(),
        int8_ips / fp32_ips,
    )
