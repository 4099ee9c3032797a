"""Build a serialized TensorRT engine from an ONNX model (TensorRT 10.x and 11.x).

Only the builder API that exists in both majors is called unconditionally:
``build_serialized_network`` (never the removed ``build_engine``), ``set_memory_pool_limit``
(never the removed ``max_workspace_size``), the timing cache and optimization profiles.
Precision flags and the INT8 calibrator are applied only when ``engines.plan`` decided the
version has them (TensorRT 10); on 11 the precision comes from the graph itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from daemon.config.model import Precision
from engines.cache import EngineKey, Platform, write_engine
from engines.onnx_info import InputLayout, OnnxInfo, info_from_model, profile_shapes
from engines.plan import BatchProfile, BuildPlan, Int8Source, TrtVersion, plan_build

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)


class EngineBuildError(RuntimeError):
    """The engine could not be built; the message (one line per problem) is for the operator."""


@dataclass(frozen=True)
class ParserIssue:
    """One ONNX parser error, copied out of TensorRT's ``ParserError``."""

    node_index: int
    node_name: str
    operator: str
    code: str
    description: str


def format_parser_issue(issue: ParserIssue) -> str:
    """``node 41 /model.22/Range (Range): UNSUPPORTED_NODE: <TensorRT's description>``."""
    if issue.node_index < 0:
        where = "model"
    else:
        name = f" {issue.node_name}" if issue.node_name else ""
        op = f" ({issue.operator})" if issue.operator else ""
        where = f"node {issue.node_index}{name}{op}"
    return f"{where}: {issue.code}: {issue.description}"


@dataclass(frozen=True)
class BuildRequest:
    onnx_path: Path
    precision: Precision
    batch: BatchProfile
    input_hw: tuple[int, int]
    workspace_mb: int
    engine_path: Path
    # Persistent timing cache file; rebuilds reuse the kernel timings measured before.
    timing_cache: Path | None
    calibration_images: Path | None = None
    calibration_cache: Path | None = None


@dataclass(frozen=True)
class BuiltEngine:
    engine_path: Path
    key: EngineKey
    plan: BuildPlan
    seconds: float


def timing_cache_path(cache_dir: Path, platform: Platform) -> Path:
    """Timing caches are per TensorRT version and GPU, like engines."""
    gpu = "".join(c if c.isalnum() else "-" for c in platform.gpu_name).strip("-").lower()
    return cache_dir / f"timing-{platform.trt_version}-{gpu}.cache"


def _prepared_model(info: OnnxInfo) -> onnx.ModelProto:
    """The graph TensorRT parses: always a uint8 NHWC input, normalised inside the graph so
    the daemon's batch goes to the GPU as uint8 and the cast/scale/transpose run there."""
    model = onnx.load(str(info.path))
    if info.input.layout is InputLayout.FLOAT_NCHW:
        from engines.export import add_uint8_input

        model = add_uint8_input(model)
    return model


def _progress_monitor() -> trt.IProgressMonitor:
    """Logs TensorRT's top-level build phases, so a minutes-long build on a Jetson shows life."""
    import tensorrt as trt

    class ProgressLog(trt.IProgressMonitor):
        def __init__(self) -> None:
            # pybind11 trampolines need the base initialised before TensorRT calls back.
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
            if not parent_phase:
                log.info("engine build phase", extra={"phase": phase_name, "steps": num_steps})

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            return None

    return ProgressLog()


def _parse(
    network: trt.INetworkDefinition, logger: trt.ILogger, model_bytes: bytes, source: Path
) -> None:
    import tensorrt as trt

    parser = trt.OnnxParser(network, logger)
    if parser.parse(model_bytes, str(source)):
        return
    issues = []
    for index in range(parser.num_errors):
        error: trt.ParserError = parser.get_error(index)
        issues.append(
            ParserIssue(
                node_index=error.node(),
                node_name=error.node_name(),
                operator=error.node_operator(),
                code=str(error.code()).rsplit(".", 1)[-1],
                description=error.desc(),
            )
        )
    lines = [format_parser_issue(i) for i in issues] or ["parser failed without an error"]
    raise EngineBuildError(f"TensorRT cannot parse {source}:\n  " + "\n  ".join(lines))


def _read_bytes(path: Path | None) -> bytes:
    if path is None or not path.is_file():
        return b""
    return path.read_bytes()


def build_engine(
    request: BuildRequest,
    platform: Platform,
    info: OnnxInfo,
    on_plan: Callable[[BuildPlan], None] | None = None,
) -> BuiltEngine:
    """Build and store the engine for ``request`` (engine + manifest, atomically).

    ``info`` describes ``request.onnx_path`` (``engines.onnx_info.read_onnx_info``); its sha256
    goes into the cache key. Raises ``EngineBuildError`` or ``UnsupportedBuild``.
    """
    import tensorrt as trt

    started = time.monotonic()
    version = TrtVersion.parse(trt.__version__)
    plan = plan_build(
        version,
        request.precision,
        info.traits,
        calibration_data=request.calibration_images is not None,
    )
    if on_plan is not None:
        on_plan(plan)
    model = _prepared_model(info)
    prepared = info_from_model(model, request.onnx_path, info.sha256)
    shapes = profile_shapes(prepared.input, request.batch, request.input_hw)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    _parse(network, logger, model.SerializeToString(), request.onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace_mb << 20)
    config.progress_monitor = _progress_monitor()
    timing = config.create_timing_cache(_read_bytes(request.timing_cache))
    config.set_timing_cache(timing, False)

    profile = builder.create_optimization_profile()
    profile.set_shape(prepared.input.name, *(trt.Dims(list(s)) for s in shapes))
    config.add_optimization_profile(profile)

    calibrator = _apply_plan(
        plan, builder=builder, config=config, request=request, prepared=prepared, shapes=shapes
    )

    log.info(
        "building TensorRT engine",
        extra={
            "model": str(request.onnx_path),
            "precision": request.precision.value,
            "batch": str(request.batch),
            "trt": str(version),
            "gpu": platform.gpu_name,
        },
    )
    serialized: trt.IHostMemory | None = builder.build_serialized_network(network, config)
    del calibrator  # TensorRT holds no reference; keep it alive until here, then release buffers
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT failed to build {request.onnx_path} ({request.precision.value}); "
            "the TensorRT log lines above say why"
        )
    if request.timing_cache is not None:
        request.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        request.timing_cache.write_bytes(bytes(timing.serialize()))

    key = EngineKey(info.sha256, request.precision, request.batch, request.input_hw, platform)
    write_engine(request.engine_path, key, bytes(serialized), request.onnx_path, plan.notes)
    seconds = time.monotonic() - started
    log.info(
        "engine built", extra={"engine": str(request.engine_path), "seconds": round(seconds, 1)}
    )
    return BuiltEngine(request.engine_path, key, plan, seconds)


def _apply_plan(
    plan: BuildPlan,
    *,
    builder: trt.Builder,
    config: trt.IBuilderConfig,
    request: BuildRequest,
    prepared: OnnxInfo,
    shapes: Sequence[tuple[int, ...]],
) -> object | None:
    """Set the TensorRT 10 precision flags and calibrator the plan asks for; returns the
    calibrator, which must outlive the build."""
    import tensorrt as trt

    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if plan.int8_flag:
        config.set_flag(trt.BuilderFlag.INT8)
    if plan.int8_source is not Int8Source.CALIBRATOR:
        return None
    assert request.calibration_images is not None  # plan_build guarantees it
    from engines.calibrator import EntropyCalibrator

    calib_shape = (min(8, request.batch.max), *shapes[2][1:])
    calib_profile = builder.create_optimization_profile()
    calib_dims = trt.Dims(list(calib_shape))
    calib_profile.set_shape(prepared.input.name, calib_dims, calib_dims, calib_dims)
    config.set_calibration_profile(calib_profile)
    calibrator = EntropyCalibrator(
        request.calibration_images, prepared.input.layout, calib_shape, request.calibration_cache
    )
    config.int8_calibrator = calibrator
    return calibrator
