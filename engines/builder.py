"""Build a serialized TensorRT engine from an ONNX model (TensorRT 10.x, 11.x, TensorRT-RTX).

The runtime's module (``engines.runtime.load_runtime``) is a parameter, so one code path serves
TensorRT and TensorRT-RTX. Only the builder API that exists in all of them is called
unconditionally: ``build_serialized_network`` (never the removed ``build_engine``),
``set_memory_pool_limit`` (never the removed ``max_workspace_size``), the timing cache and
optimization profiles. Precision flags and the INT8 calibrator are applied only when
``engines.plan`` decided the runtime has them (TensorRT 10); elsewhere the precision comes from
the graph itself. TensorRT-RTX builds ahead of time for the compute capability of the
platform it is given, which needs no GPU.

The graph TensorRT parses is prepared first (``prepare_model``): converted to float16 where
the plan says so, given a uint8 NHWC input normalised inside the graph, its height and width
pinned, and checked by ``engines.graph_checks``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import onnx

from daemon.config.model import Precision, TensorRTRuntime
from engines.cache import EngineKey, Platform, atomic_write, write_engine
from engines.export import ExportError, add_uint8_input, pin_input_hw, to_fp16
from engines.feed import CalibrationFeed
from engines.graph_checks import tensorrt_problems
from engines.onnx_info import InputLayout, OnnxInfo, info_from_model, profile_shapes
from engines.plan import (
    BatchProfile,
    BuildPlan,
    Int8Source,
    TrtVersion,
    UnsupportedBuild,
    plan_build,
)
from engines.tensors import TensorSpec, dims_tuple

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
    # Batches for TensorRT 10's implicit INT8 calibrator (a float model built as INT8).
    calibration: CalibrationFeed | None = None
    calibration_cache: Path | None = None


@dataclass(frozen=True)
class BuiltEngine:
    engine_path: Path
    key: EngineKey
    plan: BuildPlan
    seconds: float
    # The network's I/O as the engine declares it (-1 for the dynamic batch axis).
    io: tuple[TensorSpec, ...]
    engine_bytes: int


def timing_cache_path(cache_dir: Path, platform: Platform) -> Path:
    """Timing caches are per runtime, version and GPU, like engines."""
    gpu = "".join(c if c.isalnum() else "-" for c in platform.gpu_name).strip("-").lower()
    return cache_dir / f"timing-{platform.runtime.value}-{platform.trt_version}-{gpu}.cache"


def prepare_model(info: OnnxInfo, input_hw: tuple[int, int], plan: BuildPlan) -> onnx.ModelProto:
    """The graph TensorRT parses: float16 where ``plan`` converts, always a uint8 NHWC input
    normalised inside the graph (the daemon's batch goes to the GPU as uint8 and the
    cast/scale/transpose run there) with height and width pinned to ``input_hw``.

    Raises ``EngineBuildError`` naming every problem ``engines.graph_checks`` finds.
    """
    model = onnx.load(str(info.path))
    try:
        if plan.convert_fp16:
            model = to_fp16(model)
        if info.input.layout is InputLayout.FLOAT_NCHW:
            model = add_uint8_input(model)
        model = pin_input_hw(model, input_hw)
    except ExportError as exc:
        raise EngineBuildError(f"{info.path} cannot be prepared for TensorRT: {exc}") from exc
    problems = tensorrt_problems(model)
    if problems:
        raise EngineBuildError(
            f"{info.path} cannot be built with TensorRT:\n  " + "\n  ".join(problems)
        )
    return model


def _progress_monitor(trt_api: ModuleType) -> trt.IProgressMonitor:
    """Logs TensorRT's top-level build phases, so a minutes-long build on a Jetson shows life."""

    class ProgressLog(trt_api.IProgressMonitor):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            # pybind11 trampolines need the base initialised before TensorRT calls back.
            trt_api.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
            if not parent_phase:
                log.info("engine build phase", extra={"phase": phase_name, "steps": num_steps})

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            return None

    monitor: trt.IProgressMonitor = ProgressLog()
    return monitor


def _parse(
    trt_api: ModuleType,
    network: trt.INetworkDefinition,
    logger: trt.ILogger,
    model_bytes: bytes,
    source: Path,
) -> None:
    parser: trt.OnnxParser = trt_api.OnnxParser(network, logger)
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
    trt_api: ModuleType,
    on_plan: Callable[[BuildPlan], None] | None = None,
) -> BuiltEngine:
    """Build and store the engine for ``request`` (engine + manifest, atomically) with the
    runtime module ``trt_api`` (``tensorrt`` or ``tensorrt_rtx``, matching ``platform``).

    ``info`` describes ``request.onnx_path`` (``engines.onnx_info.read_onnx_info``); its sha256
    goes into the cache key. Raises ``EngineBuildError`` or ``UnsupportedBuild``: a failure
    inside TensorRT becomes an ``EngineBuildError`` too, never a bare traceback.
    """
    started = time.monotonic()
    version = TrtVersion.parse(trt_api.__version__)
    plan = plan_build(
        version,
        request.precision,
        info.traits,
        calibration_data=request.calibration is not None,
        runtime=platform.runtime,
    )
    if on_plan is not None:
        on_plan(plan)
    model = prepare_model(info, request.input_hw, plan)
    try:
        serialized, io = _build_serialized(request, platform, info, trt_api, plan=plan, model=model)
    except (EngineBuildError, UnsupportedBuild):
        raise
    except Exception as exc:  # TensorRT and PyCUDA raise many types; the operator needs one line
        log.debug("engine build failed", exc_info=True)
        raise EngineBuildError(
            f"TensorRT failed while building {request.onnx_path}: {type(exc).__name__}: {exc}"
        ) from exc

    key = EngineKey(info.sha256, request.precision, request.batch, request.input_hw, platform)
    write_engine(request.engine_path, key, serialized, request.onnx_path, plan.notes)
    seconds = time.monotonic() - started
    log.info(
        "engine built",
        extra={
            "engine": str(request.engine_path),
            "bytes": len(serialized),
            "seconds": round(seconds, 1),
        },
    )
    return BuiltEngine(request.engine_path, key, plan, seconds, io, len(serialized))


def _build_serialized(
    request: BuildRequest,
    platform: Platform,
    info: OnnxInfo,
    trt_api: ModuleType,
    *,
    plan: BuildPlan,
    model: onnx.ModelProto,
) -> tuple[bytes, tuple[TensorSpec, ...]]:
    prepared = info_from_model(model, request.onnx_path, info.sha256)
    shapes = profile_shapes(prepared.input, request.batch, request.input_hw)

    logger: trt.ILogger = trt_api.Logger(trt_api.Logger.WARNING)
    builder: trt.Builder = trt_api.Builder(logger)
    flag = int(trt_api.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network((1 << flag) if plan.strongly_typed else 0)
    _parse(trt_api, network, logger, model.SerializeToString(), request.onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt_api.MemoryPoolType.WORKSPACE, request.workspace_mb << 20)
    config.progress_monitor = _progress_monitor(trt_api)
    # TensorRT-RTX has no timing cache (its operations are deprecated no-ops there).
    rtx = platform.runtime is TensorRTRuntime.TENSORRT_RTX
    timing = None if rtx else config.create_timing_cache(_read_bytes(request.timing_cache))
    if timing is not None:
        config.set_timing_cache(timing, False)
    if rtx:
        _target_compute_capability(trt_api, config, platform)

    profile = builder.create_optimization_profile()
    profile.set_shape(prepared.input.name, *(trt_api.Dims(list(s)) for s in shapes))
    config.add_optimization_profile(profile)

    calibrator = _apply_plan(
        trt_api,
        plan,
        builder=builder,
        config=config,
        request=request,
        prepared=prepared,
        shapes=shapes,
    )

    log.info(
        "building TensorRT engine",
        extra={
            "model": str(request.onnx_path),
            "precision": request.precision.value,
            "batch": str(request.batch),
            "runtime": platform.runtime.value,
            "trt": trt_api.__version__,
            "gpu": platform.gpu_name,
        },
    )
    serialized: trt.IHostMemory | None = builder.build_serialized_network(network, config)
    del calibrator  # the build has read every batch: release its device buffer now
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT failed to build {request.onnx_path} ({request.precision.value}); "
            "the TensorRT log lines above say why"
        )
    if request.timing_cache is not None and timing is not None:
        atomic_write(request.timing_cache, bytes(timing.serialize()))
    return bytes(serialized), network_io(network)


def network_io(network: trt.INetworkDefinition) -> tuple[TensorSpec, ...]:
    """The network's inputs and outputs: what the engine built from it declares as I/O."""
    tensors = [(network.get_input(i), True) for i in range(network.num_inputs)]
    tensors += [(network.get_output(i), False) for i in range(network.num_outputs)]
    return tuple(
        TensorSpec(t.name, is_input, dims_tuple(t.shape), t.dtype.name) for t, is_input in tensors
    )


def _target_compute_capability(
    trt_api: ModuleType, config: trt.IBuilderConfig, platform: Platform
) -> None:
    """TensorRT-RTX compiles ahead of time for named compute capabilities, so an engine for a
    T4 (sm_75) can be built on any machine, a GPU-less one included."""
    major, minor = platform.compute_capability
    target = getattr(trt_api.ComputeCapability, f"SM{major}{minor}", None)
    if target is None:
        raise EngineBuildError(
            f"TensorRT-RTX {trt_api.__version__} does not support {platform.sm} "
            f"({platform.gpu_name}); it runs on Turing (sm_75) and newer RTX-class GPUs"
        )
    # TensorRT-RTX's own builder-config API; TensorRT's stubs (the type-checked API) lack it.
    rtx_config: Any = config
    rtx_config.num_compute_capabilities = 1
    if not rtx_config.set_compute_capability(target, 0):
        raise EngineBuildError(f"TensorRT-RTX refused compute capability {platform.sm}")


def _apply_plan(
    trt_api: ModuleType,
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
    if plan.fp16_flag:
        config.set_flag(trt_api.BuilderFlag.FP16)
    if plan.int8_flag:
        config.set_flag(trt_api.BuilderFlag.INT8)
    if plan.int8_source is not Int8Source.CALIBRATOR:
        return None
    assert request.calibration is not None  # plan_build guarantees it
    from engines.calibrator import EntropyCalibrator

    calib_shape = (min(8, request.batch.max), *shapes[2][1:])
    calib_profile = builder.create_optimization_profile()
    calib_dims = trt_api.Dims(list(calib_shape))
    calib_profile.set_shape(prepared.input.name, calib_dims, calib_dims, calib_dims)
    config.set_calibration_profile(calib_profile)
    calibrator = EntropyCalibrator(
        request.calibration,
        prepared.input.layout,
        calib_shape,
        request.calibration_cache,
        prepared.sha256,
    )
    config.int8_calibrator = calibrator
    return calibrator
