"""TensorRT backend: the production path on T4 and Jetson Orin.

Loading (``load``): the engine for this exact model, precision, batch profile, TensorRT
version and GPU is taken from the engine cache (``engines.cache``), built first when
``build_on_start`` allows it, and otherwise refused with a message naming what differs. A
mismatched engine is never deserialized.

Running: ``max_inflight`` slots, each with its own ``IExecutionContext``, CUDA stream, pinned
host buffers and device buffers sized once for the maximum batch, so the H2D copy, inference
and D2H copy of consecutive batches overlap on the GPU. Tensors are addressed by name
(``set_input_shape``/``set_tensor_address``/``execute_async_v3``). The uint8 NHWC batch is
copied to the GPU as uint8: the engine is built from a graph that normalises on the GPU.

Threads: ``infer`` is called from executor threads, never the event loop, and blocks on its
own stream only. The CUDA context (the device's primary context, shared with TensorRT's
runtime API) is made current in the calling thread for the duration of each call (push/pop),
which is what lets any thread drive the GPU. A thread keeps its slot from its first ``infer``
on, because the returned array is a view of that slot's pinned output buffer and must stay
valid until the same thread's next call (``Backend`` contract).

TensorRT and PyCUDA are imported inside the functions that need them: the pure parts (buffer
sizing, slot bookkeeping) are unit-tested on machines without either.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnx

from daemon.config.model import ModelConfig
from daemon.infer.backend import (
    BackendError,
    FloatArray,
    UInt8Batch,
    check_batch,
    parse_class_names,
)
from daemon.infer.slots import SlotPool
from engines.cache import CacheHit, EngineCache, EngineKey, Platform
from engines.onnx_info import ModelFileError, file_sha256
from engines.plan import resolve_profile

if TYPE_CHECKING:
    import pycuda.driver as cuda
    import tensorrt as trt

log = logging.getLogger(__name__)

DEFAULT_SLOTS = 2
_BOX_COORDS = 4

# TensorRT DataType names -> numpy; types numpy cannot hold (BF16, FP8, INT4, FP4) are refused.
_NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "UINT8": np.dtype(np.uint8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
}


def numpy_dtype(trt_dtype_name: str) -> np.dtype[Any]:
    """The numpy dtype for a TensorRT ``DataType`` name; ``BackendError`` for the others."""
    try:
        return _NUMPY_DTYPES[trt_dtype_name]
    except KeyError:
        raise BackendError(
            f"engine I/O tensor of type {trt_dtype_name} has no numpy equivalent; "
            "rebuild with float32/float16 outputs"
        ) from None


@dataclass(frozen=True)
class TensorSpec:
    """An engine I/O tensor as the engine declares it (-1 for a dynamic axis)."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype_name: str


@dataclass(frozen=True)
class BufferSpec:
    """A host/device buffer pair sized for the maximum batch."""

    name: str
    is_input: bool
    max_shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.max_shape)) * self.dtype.itemsize

    def shape_for(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.max_shape[1:])


def buffer_specs(
    tensors: Sequence[TensorSpec], max_batch: int, input_hw: tuple[int, int]
) -> list[BufferSpec]:
    """Size every I/O buffer: the batch axis becomes ``max_batch``.

    The engine's input must be uint8 ``[-1, H, W, 3]`` (normalisation inside the graph) with
    ``(H, W) == input_hw``; any other dynamic axis cannot be sized and is refused.
    """
    inputs = [t for t in tensors if t.is_input]
    if len(inputs) != 1:
        raise BackendError(f"engine has {len(inputs)} inputs, expected one image input")
    (inp,) = inputs
    if inp.dtype_name != "UINT8" or len(inp.shape) != 4 or inp.shape[1:] != (*input_hw, 3):
        raise BackendError(
            f"engine input {inp.name!r} is {inp.dtype_name} {list(inp.shape)}; expected UINT8 "
            f"[N, {input_hw[0]}, {input_hw[1]}, 3] (build it with edgewatch build-engine)"
        )
    specs = []
    for tensor in tensors:
        if not tensor.shape or tensor.shape[0] not in (-1, max_batch):
            raise BackendError(
                f"engine tensor {tensor.name!r} {list(tensor.shape)} has no dynamic batch axis"
            )
        if any(d < 0 for d in tensor.shape[1:]):
            raise BackendError(
                f"engine tensor {tensor.name!r} {list(tensor.shape)} is dynamic beyond the batch"
            )
        specs.append(
            BufferSpec(
                tensor.name,
                tensor.is_input,
                (max_batch, *tensor.shape[1:]),
                numpy_dtype(tensor.dtype_name),
            )
        )
    outputs = [s for s in specs if not s.is_input]
    if len(outputs) != 1 or len(outputs[0].max_shape) != 3:
        raise BackendError(
            f"engine outputs {[list(s.max_shape) for s in outputs]}; expected one YOLOv8 head "
            "[N, 4 + classes, anchors]"
        )
    return specs


def names_metadata(path: Path) -> str | None:
    """Ultralytics' raw ``names`` metadata of the source ONNX (engines carry no metadata)."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}.get("names")


@dataclass(frozen=True)
class EngineChoice:
    """Where the engine for a model config lives and whether it still has to be built."""

    key: EngineKey
    engine: Path
    needs_build: bool


def choose_engine(model: ModelConfig, platform: Platform) -> EngineChoice:
    """Find the cached engine for ``model`` on ``platform``, or decide to build it.

    Raises ``BackendError`` when there is none and ``build_on_start`` is off; the message
    names every near miss (an engine for another TensorRT/GPU/precision...) and the command
    that builds the right one.
    """
    cfg = model.tensorrt
    try:
        profile = resolve_profile(cfg.batch_profile, model.max_batch)
        sha = file_sha256(model.path)
    except ValueError as exc:
        raise BackendError(f"model.tensorrt: {exc}") from exc
    except OSError as exc:
        raise BackendError(f"model file {model.path} cannot be read: {exc}") from exc
    key = EngineKey(sha, cfg.precision, profile, (model.input_size, model.input_size), platform)
    found = EngineCache(cfg.engine_cache_dir).lookup(key)
    if isinstance(found, CacheHit):
        return EngineChoice(key, found.engine, needs_build=False)
    if cfg.build_on_start:
        for reason in found.reasons:
            log.warning(
                "cached engine not usable here; building a new one", extra={"reason": reason}
            )
        return EngineChoice(key, found.engine, needs_build=True)
    hint = (
        f"build it with: edgewatch build-engine --model {model.path} --precision "
        f"{cfg.precision.value} --batch {profile} --imgsz {model.input_size} --cache-dir "
        f"{cfg.engine_cache_dir} (or set model.tensorrt.build_on_start: true)"
    )
    detail = "; ".join(found.reasons) if found.reasons else f"no engine at {found.engine}"
    raise BackendError(f"no TensorRT engine for this model and machine: {detail}. {hint}")


@dataclass
class _Slot:
    context: trt.IExecutionContext
    stream: cuda.Stream
    host: dict[str, npt.NDArray[Any]]
    device: dict[str, cuda.DeviceAllocation]


class TensorRTBackend:
    """A deserialized engine with ``slots`` pipelined execution slots (see module docstring).

    ``names`` is the source ONNX's raw ``names`` metadata: engines carry none of their own.
    """

    def __init__(
        self,
        engine_path: Path,
        *,
        names: str | None,
        input_hw: tuple[int, int],
        max_batch: int,
        slots: int = DEFAULT_SLOTS,
        device: int = 0,
    ) -> None:
        import tensorrt as trt

        from engines.gpu import context_current, retain_context

        self._input_hw = input_hw
        self._max_batch = max_batch
        with _gpu_required():
            self._ctx = retain_context(device)
        self._closed = False
        try:
            with _cuda_failures(f"loading {engine_path}"), context_current(self._ctx):
                self._logger = trt.Logger(trt.Logger.WARNING)
                self._runtime = trt.Runtime(self._logger)
                engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(
                    engine_path.read_bytes()
                )
                if engine is None:
                    raise BackendError(f"TensorRT could not deserialize {engine_path}")
                self._engine = engine
                tensors = [
                    self._tensor_spec(engine, engine.get_tensor_name(i))
                    for i in range(engine.num_io_tensors)
                ]
                self._specs = buffer_specs(tensors, max_batch, input_hw)
                self._input = next(s for s in self._specs if s.is_input)
                self._output = next(s for s in self._specs if not s.is_input)
                channels = self._output.max_shape[1]
                self._class_names = parse_class_names(names, channels - _BOX_COORDS)
                self._pool = SlotPool([self._make_slot() for _ in range(max(slots, 1))])
                # Warm-up: first launches pay for lazy module loading and kernel selection.
                warm = np.zeros(self._input.max_shape, np.uint8)
                for slot in self._pool.all_slots():
                    self._run(slot, warm)
                    self._run(slot, warm[:1])
        except BaseException:
            # Nothing else will release the primary context this constructor retained.
            self._ctx.detach()
            raise
        log.info(
            "tensorrt backend loaded",
            extra={
                "engine": str(engine_path),
                "trt": trt.__version__,
                "slots": self._pool.size,
                "max_batch": max_batch,
                "output": list(self._output.max_shape),
            },
        )

    @staticmethod
    def _tensor_spec(engine: trt.ICudaEngine, name: str) -> TensorSpec:
        import tensorrt as trt

        return TensorSpec(
            name=name,
            is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
            shape=_dims_tuple(engine.get_tensor_shape(name)),
            dtype_name=engine.get_tensor_dtype(name).name,
        )

    def _make_slot(self) -> _Slot:
        import pycuda.driver as cuda

        context = self._engine.create_execution_context()
        if context is None:
            raise BackendError("TensorRT could not create an execution context (GPU memory?)")
        host: dict[str, npt.NDArray[Any]] = {}
        device: dict[str, cuda.DeviceAllocation] = {}
        for spec in self._specs:
            host[spec.name] = cuda.pagelocked_empty(spec.max_shape, spec.dtype)
            device[spec.name] = cuda.mem_alloc(spec.nbytes)
            # Addresses never change, so they are bound once per context.
            if not context.set_tensor_address(spec.name, int(device[spec.name])):
                raise BackendError(f"TensorRT refused the address of tensor {spec.name!r}")
        return _Slot(context, cuda.Stream(), host, device)

    @property
    def name(self) -> str:
        return "tensorrt"

    @property
    def input_hw(self) -> tuple[int, int]:
        return self._input_hw

    @property
    def dynamic_hw(self) -> bool:
        # The engine's optimisation profile fixes H and W; only the batch dimension varies.
        return False

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def max_inflight(self) -> int:
        return self._pool.size

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    def infer(self, batch: UInt8Batch) -> FloatArray:
        """Run ``batch`` on this thread's slot; returns a view of its pinned output buffer."""
        from engines.gpu import context_current

        check_batch(batch, self._max_batch, self._input_hw, dynamic_hw=False)
        if self._closed:
            raise BackendError("tensorrt backend used after close()")
        slot = self._pool.slot_for_current_thread()
        with context_current(self._ctx):
            out = self._run(slot, batch)
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def _run(self, slot: _Slot, batch: UInt8Batch) -> npt.NDArray[Any]:
        import pycuda.driver as cuda

        n = batch.shape[0]
        host_in = slot.host[self._input.name][:n]
        # The one host-side copy: into pinned memory, so the H2D copy is a true async DMA.
        np.copyto(host_in, batch)
        if not slot.context.set_input_shape(self._input.name, self._input.shape_for(n)):
            raise BackendError(f"TensorRT refused input shape {self._input.shape_for(n)}")
        cuda.memcpy_htod_async(slot.device[self._input.name], host_in, slot.stream)
        if not slot.context.execute_async_v3(slot.stream.handle):
            raise BackendError("TensorRT execute_async_v3 failed")
        host_out = slot.host[self._output.name][:n]
        cuda.memcpy_dtoh_async(host_out, slot.device[self._output.name], slot.stream)
        # Blocks this executor thread only (PyCUDA releases the GIL while waiting).
        slot.stream.synchronize()
        return host_out

    def close(self) -> None:
        from engines.gpu import context_current

        if self._closed:
            return
        self._closed = True
        with context_current(self._ctx):
            for slot in self._pool.release():
                slot.stream.synchronize()
                for allocation in slot.device.values():
                    allocation.free()
                del slot.context
            del self._engine, self._runtime
        self._ctx.detach()


def load_engine_backend(model: ModelConfig, platform: Platform) -> TensorRTBackend:
    """Resolve (and if allowed build) the engine for ``model``, then load it."""
    choice = choose_engine(model, platform)
    if choice.needs_build:
        _build_on_start(model, choice)
    return TensorRTBackend(
        choice.engine,
        names=names_metadata(model.path),
        input_hw=(model.input_size, model.input_size),
        max_batch=model.max_batch,
    )


def _dims_tuple(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


def _build_on_start(model: ModelConfig, choice: EngineChoice) -> None:
    from engines.builder import BuildRequest, EngineBuildError, build_engine, timing_cache_path
    from engines.gpu import context_current, retain_context
    from engines.onnx_info import read_onnx_info
    from engines.plan import UnsupportedBuild

    cfg = model.tensorrt
    log.warning(
        "building the TensorRT engine on first start; this takes minutes",
        extra={
            "model": str(model.path),
            "precision": cfg.precision.value,
            "engine": str(choice.engine),
        },
    )
    request = BuildRequest(
        onnx_path=model.path,
        precision=cfg.precision,
        batch=choice.key.batch,
        input_hw=choice.key.input_hw,
        workspace_mb=cfg.workspace_mb,
        engine_path=choice.engine,
        timing_cache=timing_cache_path(cfg.engine_cache_dir, choice.key.platform),
    )
    with _gpu_required():
        ctx = retain_context()
    try:
        with _cuda_failures("building the TensorRT engine"), context_current(ctx):
            build_engine(request, choice.key.platform, read_onnx_info(model.path))
    except (EngineBuildError, UnsupportedBuild, ModelFileError, OSError) as exc:
        raise BackendError(f"building the TensorRT engine failed: {exc}") from exc
    finally:
        ctx.detach()


def load(model: ModelConfig) -> TensorRTBackend:
    """Factory entry point (``daemon.infer.factory``): ``BackendError`` for every failure."""
    from engines.gpu import detect_platform

    with _gpu_required():
        platform = detect_platform()
    return load_engine_backend(model, platform)


@contextmanager
def _gpu_required() -> Iterator[None]:
    """Report a missing or unusable GPU as ``BackendError``, the error the factory falls back
    to ONNX Runtime on and logs for the operator."""
    from engines.gpu import GpuUnavailable

    try:
        yield
    except GpuUnavailable as exc:
        raise BackendError(f"TensorRT backend unavailable: {exc}") from exc


@contextmanager
def _cuda_failures(action: str) -> Iterator[None]:
    """Report a CUDA error while ``action`` (out of GPU memory, most often) as ``BackendError``
    rather than PyCUDA's own exception, which neither the factory nor the operator expects."""
    import pycuda.driver as cuda

    try:
        yield
    except cuda.Error as exc:
        raise BackendError(f"CUDA failed while {action}: {exc}") from exc
