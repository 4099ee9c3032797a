"""``edgewatch build-engine``: ONNX -> TensorRT engine in the engine cache (or at ``--out``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from daemon.commands.argtypes import positive_int
from daemon.commands.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from daemon.config.model import Precision, TensorRTConfig, TensorRTRuntime
from engines.plan import BatchProfile, BuildPlan

log = logging.getLogger(__name__)


def _batch(text: str) -> BatchProfile:
    try:
        return BatchProfile.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(sub: Any) -> None:
    """Add the ``build-engine`` subcommand."""
    defaults = TensorRTConfig()
    parser: argparse.ArgumentParser = sub.add_parser(
        "build-engine",
        help="build a TensorRT engine from an ONNX model",
        description=(
            "Build a TensorRT engine (TensorRT 10.x/11.x or TensorRT-RTX) for this GPU and "
            "store it with its manifest in the engine cache, where `edgewatch run` finds it."
        ),
    )
    parser.add_argument("--model", required=True, type=Path, help="ONNX model (float or Q/DQ)")
    parser.add_argument("--precision", required=True, choices=[p.value for p in Precision])
    parser.add_argument(
        "--runtime",
        choices=[r.value for r in TensorRTRuntime],
        default=defaults.runtime.value,
        help="TensorRT (default) or TensorRT-RTX; must match model.tensorrt.runtime",
    )
    parser.add_argument(
        "--batch",
        type=_batch,
        default=BatchProfile.for_max_batch(8),
        metavar="MIN:OPT:MAX",
        help="dynamic batch profile (default 1:8:8)",
    )
    parser.add_argument("--imgsz", type=positive_int, default=640, help="input height and width")
    parser.add_argument(
        "--workspace",
        type=positive_int,
        default=defaults.workspace_mb,
        metavar="MB",
        help="builder workspace memory pool limit",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=defaults.engine_cache_dir,
        help="engine cache folder (also holds the timing cache)",
    )
    parser.add_argument("--out", type=Path, help="write the engine here instead of the cache")
    parser.add_argument(
        "--calib-images",
        type=Path,
        metavar="DIR",
        help="images for legacy INT8 calibration (TensorRT 10, float model): a folder, a "
        "dataset root or a `calib collect` output, as `edgewatch calibrate --images` takes",
    )
    parser.add_argument(
        "--calib-cache", type=Path, metavar="FILE", help="INT8 calibration cache to reuse/write"
    )
    parser.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    from calib.images import CalibrationDataError
    from daemon.infer.cuda import GpuUnavailable
    from engines.builder import EngineBuildError
    from engines.onnx_info import ModelFileError
    from engines.plan import UnsupportedBuild
    from engines.runtime import RuntimeMissing

    if args.calib_images is not None and not args.calib_images.is_dir():
        log.error("calibration image folder not found", extra={"path": str(args.calib_images)})
        return EXIT_USAGE
    # What the operator must change (the model, the options, the installed runtime) is a usage
    # error; a machine or TensorRT that fails is a failure.
    try:
        built = _build_engine(args)
    except (ModelFileError, UnsupportedBuild, CalibrationDataError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except (RuntimeMissing, GpuUnavailable) as exc:
        # A missing runtime or GPU is the operator's to fix, as `run` reports it: exit 2.
        log.error("cannot build a TensorRT engine here: %s", exc)
        return EXIT_USAGE
    except (EngineBuildError, OSError) as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    print(built)
    return EXIT_OK


def _build_engine(args: argparse.Namespace) -> Path:
    """Build as ``args`` ask on this machine's GPU; returns the engine's path."""
    from calib.feed import ImageFolderFeed
    from daemon.infer.cuda import context_current, detect_platform, retain_context
    from engines.builder import BuildRequest, build_engine, timing_cache_path
    from engines.cache import EngineCache, EngineKey
    from engines.onnx_info import read_onnx_info
    from engines.runtime import load_runtime

    precision = Precision(args.precision)
    runtime = TensorRTRuntime(args.runtime)
    info = read_onnx_info(args.model)
    trt_api = load_runtime(runtime)
    platform = detect_platform(trt_api, runtime)
    key = EngineKey(info.sha256, precision, args.batch, (args.imgsz, args.imgsz), platform)
    request = BuildRequest(
        onnx_path=args.model,
        precision=precision,
        batch=args.batch,
        input_hw=(args.imgsz, args.imgsz),
        workspace_mb=args.workspace,
        engine_path=args.out or EngineCache(args.cache_dir).engine_path(key),
        timing_cache=timing_cache_path(args.cache_dir, platform),
        calibration=ImageFolderFeed(args.calib_images) if args.calib_images else None,
        calibration_cache=args.calib_cache,
    )
    context = retain_context()
    try:
        with context_current(context):
            return build_engine(request, platform, info, trt_api, on_plan=_log_plan).engine_path
    finally:
        context.detach()


def _log_plan(plan: BuildPlan) -> None:
    log.info(
        "build plan",
        extra={
            "strongly_typed": plan.strongly_typed,
            "fp16_flag": plan.fp16_flag,
            "int8_flag": plan.int8_flag,
            "int8": plan.int8_source.value,
            "notes": list(plan.notes),
        },
    )
