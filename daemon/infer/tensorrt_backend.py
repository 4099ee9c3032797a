"""TensorRT backend: the production path on T4 and Jetson Orin (TensorRT or TensorRT-RTX).

Loading (``load``): the engine for this exact model, precision, batch profile, runtime,
version and GPU is taken from the engine cache (``engines.cache``), built first when
``build_on_start`` allows it, and otherwise refused with a message naming what differs. A
mismatched engine is never deserialized. The runtime's module (``tensorrt`` or
``tensorrt_rtx``) is a constructor parameter: one code path for both.

Sizing: an engine reports ``-1`` for every dynamic axis in ``get_tensor_shape``, so buffers are
sized from what TensorRT documents as the answer: the input's largest shape from the
optimization profile (``get_tensor_profile_shape``) and each output's shape from the execution
context once that input shape is set (``IExecutionContext.get_tensor_shape``).

Running: ``max_inflight`` slots, each with its own ``IExecutionContext``, CUDA stream, pinned
host buffers and device buffers sized once for the maximum batch, so the H2D copy, inference
and D2H copy of consecutive batches overlap on the GPU. Tensors are addressed by name
(``set_input_shape``/``set_tensor_address``/``execute_async_v3``). The uint8 NHWC batch is
copied to the GPU as uint8: the engine is built from a graph that normalises on the GPU. The
calling thread waits on a blocking-sync event rather than ``Stream.synchronize``, which
spin-waits a whole CPU core per batch in flight. Timing events recorded around the copies
split each batch into upload, compute and download (``TimedTransfers``), read after that
wait. On a GPU that shares memory with the CPU (Jetson), the pinned host buffers are mapped
into the device and bound directly: no copies, so no split either.

Threads: ``infer`` is called from executor threads, never the event loop, and blocks on its
own slot only. The CUDA context (the device's primary context, shared with TensorRT's
runtime API) is made current in the calling thread for the duration of each call (push/pop),
which is what lets any thread drive the GPU. A thread keeps its slot from its first ``infer``
on, because the returned array is a view of that slot's pinned output buffer and must stay
valid until the same thread's next call (``Backend`` contract).

TensorRT and PyCUDA are imported inside the functions that need them: the pure parts (buffer
sizing, slot bookkeeping) are unit-tested on machines without either.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import onnx

from daemon.config.model import ModelConfig
from daemon.infer.backend import (
    BackendError,
    FloatArray,
    TransferTimes,
    UInt8Batch,
    check_batch,
    parse_class_names,
)
from daemon.infer.slots import SlotPool
from engines.cache import CacheHit, EngineCache, EngineKey, Platform
from engines.onnx_info import ModelFileError, file_sha256
from engines.plan import resolve_profile
from engines.tensors import TensorSpec, dims_tuple

if TYPE_CHECKING:
    import pycuda.driver as cuda
    import tensorrt as trt

log = logging.getLogger(__name__)

DEFAULT_SLOTS = 2
_BOX_COORDS = 4
_MAX_PROFILE_SHAPE = 2
# Timing events per slot: before and after the upload, before and after the download.
_MARKS = 4

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


def image_input(
    tensors: Sequence[TensorSpec],
    profile_max: Sequence[int],
    max_batch: int,
    input_hw: tuple[int, int],
) -> tuple[TensorSpec, tuple[int, ...]]:
    """The engine's one image input and the shape to size it for: ``max_batch`` images of
    ``input_hw``, which its optimization profile (largest shape ``profile_max``) must allow.

    The input must be uint8 ``[N, H, W, 3]`` (normalisation inside the graph); the declared
    shape may say ``-1`` for any axis, the profile decides what is accepted.
    """
    inputs = [t for t in tensors if t.is_input]
    if len(inputs) != 1:
        raise BackendError(f"engine has {len(inputs)} inputs, expected one image input")
    (inp,) = inputs
    want = (max_batch, *input_hw, 3)
    declared_ok = len(inp.shape) == 4 and all(
        d in (-1, w) for d, w in zip(inp.shape[1:], want[1:], strict=True)
    )
    if inp.dtype_name != "UINT8" or not declared_ok:
        raise BackendError(
            f"engine input {inp.name!r} is {inp.dtype_name} {list(inp.shape)}; expected UINT8 "
            f"[N, {input_hw[0]}, {input_hw[1]}, 3] (build it with edgewatch build-engine)"
        )
    limit = tuple(int(d) for d in profile_max)
    if len(limit) != 4 or limit[0] < max_batch or limit[1:] != want[1:]:
        raise BackendError(
            f"engine input {inp.name!r} accepts at most {list(limit)}; the batcher sends "
            f"{list(want)} (rebuild with --batch 1:{max_batch}:{max_batch} "
            f"--imgsz {input_hw[0]})"
        )
    return inp, want


def buffer_specs(
    tensors: Sequence[TensorSpec],
    input_shape: tuple[int, ...],
    output_shapes: Mapping[str, Sequence[int]],
) -> list[BufferSpec]:
    """Size every I/O buffer: the input at ``input_shape`` (from ``image_input``), each output
    at the shape the execution context computed for that input (``output_shapes``)."""
    specs = []
    for tensor in tensors:
        shape = (
            input_shape if tensor.is_input else tuple(int(d) for d in output_shapes[tensor.name])
        )
        if not shape or any(d <= 0 for d in shape):
            raise BackendError(
                f"engine tensor {tensor.name!r} has no concrete shape {list(shape)} for the "
                f"input {list(input_shape)}"
            )
        specs.append(
            BufferSpec(tensor.name, tensor.is_input, shape, numpy_dtype(tensor.dtype_name))
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
    # Recorded after a batch's last copy; waiting on it sleeps instead of spinning.
    done: cuda.Event
    host: dict[str, npt.NDArray[Any]]
    # None where the pinned host buffer itself is mapped into the device (zero-copy).
    device: dict[str, cuda.DeviceAllocation | None]
    # Timing events recorded before the upload, after it, after the compute and after the
    # download; none with zero-copy, which has no transfers to time.
    marks: tuple[cuda.Event, ...]
    # The split of the slot's last successful batch (``TimedTransfers``).
    times: TransferTimes | None = None


class TensorRTBackend:
    """A deserialized engine with ``slots`` pipelined execution slots (see module docstring).

    ``trt_api`` is the runtime's module (``tensorrt`` or ``tensorrt_rtx``); ``names`` is the
    source ONNX's raw ``names`` metadata: engines carry none of their own.
    """

    def __init__(
        self,
        engine_path: Path,
        trt_api: ModuleType,
        *,
        names: str | None,
        input_hw: tuple[int, int],
        max_batch: int,
        slots: int = DEFAULT_SLOTS,
        device: int = 0,
    ) -> None:
        from daemon.infer.cuda import context_current, retain_context, shares_host_memory

        self._trt = trt_api
        self._input_hw = input_hw
        self._max_batch = max_batch
        with _gpu_required():
            self._ctx = retain_context(device)
            self._zero_copy = shares_host_memory(device)
        self._closed = False
        try:
            with _cuda_failures(f"loading {engine_path}"), context_current(self._ctx):
                self._logger: trt.ILogger = trt_api.Logger(trt_api.Logger.WARNING)
                self._runtime: trt.Runtime = trt_api.Runtime(self._logger)
                engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(
                    engine_path.read_bytes()
                )
                if engine is None:
                    raise BackendError(f"TensorRT could not deserialize {engine_path}")
                self._engine = engine
                self._specs = self._size_buffers()
                self._input = next(s for s in self._specs if s.is_input)
                self._output = next(s for s in self._specs if not s.is_input)
                channels = self._output.max_shape[1]
                self._class_names = parse_class_names(names, channels - _BOX_COORDS)
                self._pool = SlotPool([self._make_slot() for _ in range(max(slots, 1))])
                # Warm-up, every batch size on every slot: first launches pay for lazy
                # module loading and kernel selection (TensorRT-RTX compiles kernels for the
                # shapes it meets), which must not stall the first batches served.
                warm = np.zeros(self._input.max_shape, np.uint8)
                for slot in self._pool.all_slots():
                    for n in range(max_batch, 0, -1):
                        self._run(slot, warm[:n])
        except BaseException:
            # Nothing else will release the primary context this constructor retained.
            self._ctx.detach()
            raise
        log.info(
            "tensorrt backend loaded",
            extra={
                "engine": str(engine_path),
                "runtime": trt_api.__name__,
                "trt": trt_api.__version__,
                "slots": self._pool.size,
                "max_batch": max_batch,
                "zero_copy": self._zero_copy,
                "output": list(self._output.max_shape),
            },
        )

    def _size_buffers(self) -> list[BufferSpec]:
        """Buffer specs from the profile's input limit and the shapes a context computes."""
        engine = self._engine
        tensors = [
            self._tensor_spec(engine, engine.get_tensor_name(i))
            for i in range(engine.num_io_tensors)
        ]
        inputs = [t for t in tensors if t.is_input]
        profile_max = (
            engine.get_tensor_profile_shape(inputs[0].name, 0)[_MAX_PROFILE_SHAPE]
            if len(inputs) == 1
            else ()
        )
        inp, shape = image_input(tensors, dims_tuple(profile_max), self._max_batch, self._input_hw)
        probe = engine.create_execution_context()
        if probe is None:
            raise BackendError("TensorRT could not create an execution context (GPU memory?)")
        if not probe.set_input_shape(inp.name, shape):
            raise BackendError(f"TensorRT refused input shape {list(shape)}")
        outputs = {t.name: dims_tuple(probe.get_tensor_shape(t.name)) for t in tensors}
        del probe
        return buffer_specs(tensors, shape, outputs)

    def _tensor_spec(self, engine: trt.ICudaEngine, name: str) -> TensorSpec:
        return TensorSpec(
            name=name,
            is_input=engine.get_tensor_mode(name) == self._trt.TensorIOMode.INPUT,
            shape=dims_tuple(engine.get_tensor_shape(name)),
            dtype_name=engine.get_tensor_dtype(name).name,
        )

    def _make_slot(self) -> _Slot:
        import pycuda.driver as cuda

        context = self._engine.create_execution_context()
        if context is None:
            raise BackendError("TensorRT could not create an execution context (GPU memory?)")
        host: dict[str, npt.NDArray[Any]] = {}
        device: dict[str, cuda.DeviceAllocation | None] = {}
        for spec in self._specs:
            if self._zero_copy:
                host[spec.name] = cuda.pagelocked_empty(
                    spec.max_shape, spec.dtype, mem_flags=cuda.host_alloc_flags.DEVICEMAP
                )
                device[spec.name] = None
                address = _host_allocation(host[spec.name]).get_device_pointer()
            else:
                host[spec.name] = cuda.pagelocked_empty(spec.max_shape, spec.dtype)
                allocation = cuda.mem_alloc(spec.nbytes)
                device[spec.name] = allocation
                address = int(allocation)
            # Addresses never change, so they are bound once per context.
            if not context.set_tensor_address(spec.name, address):
                raise BackendError(f"TensorRT refused the address of tensor {spec.name!r}")
        flags = cuda.event_flags.BLOCKING_SYNC | cuda.event_flags.DISABLE_TIMING
        marks = () if self._zero_copy else tuple(cuda.Event() for _ in range(_MARKS))
        return _Slot(context, cuda.Stream(), cuda.Event(flags), host, device, marks)

    @property
    def name(self) -> str:
        return "tensorrt"

    @property
    def input_hw(self) -> tuple[int, int]:
        return self._input_hw

    @property
    def dynamic_hw(self) -> bool:
        # The engine's graph fixes H and W; only the batch dimension varies.
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
        from daemon.infer.cuda import context_current

        check_batch(batch, self._max_batch, self._input_hw, dynamic_hw=False)
        if self._closed:
            raise BackendError("tensorrt backend used after close()")
        slot = self._pool.slot_for_current_thread()
        with _cuda_failures("running a batch"), context_current(self._ctx):
            out = self._run(slot, batch)
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def last_transfer_times(self) -> TransferTimes | None:
        """The calling thread's last batch split into upload, compute and download
        (``TimedTransfers``); None with zero-copy."""
        slot = self._pool.current()
        return None if slot is None else slot.times

    def warm_up(self, hws: Iterable[tuple[int, int]]) -> None:
        """Nothing left to do: the engine's one input size and every batch size were run on
        every slot when it loaded."""
        for hw in hws:
            if hw != self._input_hw:
                raise BackendError(f"the engine's input is {self._input_hw}, not {hw}")

    def _run(self, slot: _Slot, batch: UInt8Batch) -> npt.NDArray[Any]:
        import pycuda.driver as cuda

        slot.times = None
        n = batch.shape[0]
        host_in = slot.host[self._input.name][:n]
        staging = time.perf_counter()
        # The one host-side copy: into pinned memory, so the H2D copy is a true async DMA
        # (or, mapped, the GPU reads it in place).
        np.copyto(host_in, batch)
        staged_s = time.perf_counter() - staging
        if not slot.context.set_input_shape(self._input.name, self._input.shape_for(n)):
            raise BackendError(f"TensorRT refused input shape {self._input.shape_for(n)}")
        marks = iter(slot.marks)
        device_in = slot.device[self._input.name]
        if device_in is not None:
            next(marks).record(slot.stream)
            cuda.memcpy_htod_async(device_in, host_in, slot.stream)
            next(marks).record(slot.stream)
        if not slot.context.execute_async_v3(slot.stream.handle):
            raise BackendError("TensorRT execute_async_v3 failed")
        host_out = slot.host[self._output.name][:n]
        device_out = slot.device[self._output.name]
        if device_out is not None:
            next(marks).record(slot.stream)
            cuda.memcpy_dtoh_async(host_out, device_out, slot.stream)
            next(marks).record(slot.stream)
        slot.done.record(slot.stream)
        # Sleeps this executor thread only (PyCUDA releases the GIL while waiting).
        slot.done.synchronize()
        if slot.marks:
            elapsed_ms = [end.time_since(start) for start, end in pairwise(slot.marks)]
            slot.times = TransferTimes.from_events(staged_s, elapsed_ms)
        return host_out

    def close(self) -> None:
        """Wait for the slots' work, then free every slot's execution context, stream, event
        and buffers while the CUDA context is current, then the engine and the runtime, and
        only then give the context back: PyCUDA skips destroying what outlives its context
        (a leak), so nothing of a slot may stay referenced past ``detach``. Arrays returned by
        ``infer`` are invalid afterwards."""
        from daemon.infer.cuda import context_current

        if self._closed:
            return
        self._closed = True
        with context_current(self._ctx):
            _release_slots(self._pool.release())
            del self._engine, self._runtime
        self._ctx.detach()


def _release_slots(slots: list[_Slot]) -> None:
    """Synchronize and free ``slots`` (the caller holds the CUDA context current)."""
    for slot in slots:
        slot.done.synchronize()
        slot.stream.synchronize()
    for slot in slots:
        for allocation in slot.device.values():
            if allocation is not None:
                allocation.free()
        for array in slot.host.values():
            _host_allocation(array).free()
    slots.clear()


def load_engine_backend(
    model: ModelConfig, platform: Platform, trt_api: ModuleType
) -> TensorRTBackend:
    """Resolve (and if allowed build) the engine for ``model``, then load it."""
    choice = choose_engine(model, platform)
    if choice.needs_build:
        _build_on_start(model, choice, trt_api)
    return TensorRTBackend(
        choice.engine,
        trt_api,
        names=names_metadata(model.path),
        input_hw=(model.input_size, model.input_size),
        max_batch=model.max_batch,
        slots=model.inflight_batches,
    )


def _host_allocation(array: npt.NDArray[Any]) -> cuda.HostAllocation:
    """The pinned allocation behind an array from ``pagelocked_empty``."""
    return cast("cuda.HostAllocation", array.base)


def _build_on_start(model: ModelConfig, choice: EngineChoice, trt_api: ModuleType) -> None:
    from daemon.infer.cuda import context_current, retain_context
    from engines.builder import BuildRequest, EngineBuildError, build_engine, timing_cache_path
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
            build_engine(request, choice.key.platform, read_onnx_info(model.path), trt_api)
    except (EngineBuildError, UnsupportedBuild, ModelFileError, OSError) as exc:
        raise BackendError(f"building the TensorRT engine failed: {exc}") from exc
    finally:
        ctx.detach()


def load(model: ModelConfig) -> TensorRTBackend:
    """Factory entry point (``daemon.infer.factory``): ``BackendError`` for every failure."""
    from daemon.infer.cuda import detect_platform
    from engines.runtime import RuntimeMissing, load_runtime

    runtime = model.tensorrt.runtime
    try:
        trt_api = load_runtime(runtime)
    except RuntimeMissing as exc:
        raise BackendError(f"TensorRT backend unavailable: {exc}") from exc
    with _gpu_required():
        platform = detect_platform(trt_api, runtime)
    return load_engine_backend(model, platform, trt_api)


@contextmanager
def _gpu_required() -> Iterator[None]:
    """Report a missing or unusable GPU as ``BackendError``, the error the factory falls back
    to ONNX Runtime on and logs for the operator."""
    from daemon.infer.cuda import GpuUnavailable

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
