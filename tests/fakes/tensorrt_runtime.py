"""A TensorRT runtime and a PyCUDA driver for machines without a GPU, written to behave as
NVIDIA and PyCUDA document them, not as edgewatch's backend assumes:

- an engine reports ``-1`` for every dynamic axis in ``get_tensor_shape``; inputs' limits come
  from ``get_tensor_profile_shape``; an execution context reports an output's shape only once
  every input shape is set (``set_input_shape``, which refuses shapes outside the profile);
- ``execute_async_v3`` needs every input shape and every tensor address set, and only
  enqueues: copies and inference run when the stream is synchronized or a recorded event is
  waited on, reading the source buffers at that moment, as a real DMA does;
- an event's record completes in stream order, after the work queued before it; a timing
  event (created without ``DISABLE_TIMING``) notes when, and ``time_since`` gives the
  milliseconds between two of them, refusing events created with ``DISABLE_TIMING``, never
  recorded, or not complete yet, as ``cuEventElapsedTime`` does;
- allocations, copies and synchronization need a current CUDA context
  (``CUDA_ERROR_INVALID_CONTEXT`` otherwise); a free needs its context alive (PyCUDA makes it
  current itself); a stream or event still referenced when the last reference to the context
  is detached is never destroyed (PyCUDA skips it: a leak, recorded in ``Driver.leaks``);
- an execution context keeps its engine alive and an engine its runtime, as the Python
  bindings do, so their destruction order cannot go wrong.

The engine's I/O is not invented here: ``write_engine_file`` records what NVIDIA's parser
and builder declared for the real graph (``BuiltEngine.io`` from a TensorRT-RTX build), and
"inference" runs that same prepared graph with ONNX Runtime, so outputs are real outputs.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import types
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from engines.tensors import TensorSpec

MAGIC = "edgewatch-test-engine"
_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "UINT8": np.uint8, "INT32": np.int32}


def write_engine_file(
    path: Path,
    io: Sequence[TensorSpec],
    profile: tuple[Sequence[int], Sequence[int], Sequence[int]],
    graph: Path,
) -> None:
    """An engine for the fake runtime: the real build's I/O, the input's profile and the
    prepared ONNX graph the real engine was built from."""
    path.write_text(
        json.dumps(
            {
                "magic": MAGIC,
                "io": [[t.name, t.is_input, list(t.shape), t.dtype_name] for t in io],
                "profile": [list(s) for s in profile],
                "graph": str(graph),
            }
        )
    )


class CudaError(Exception):
    """``pycuda.driver.Error``."""


@dataclass
class Driver:
    """Device state and what the test asserts on: live allocations, leaked CUDA objects."""

    integrated: bool = False
    memory: dict[int, bytearray] = field(default_factory=dict)
    leaks: list[str] = field(default_factory=list)
    retained: int = 0
    executions: int = 0
    _addresses: itertools.count[int] = field(
        default_factory=lambda: itertools.count(1 << 40, 1 << 28)
    )
    _local: threading.local = field(default_factory=threading.local)

    def stack(self) -> list[object]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        stack: list[object] = self._local.stack
        return stack

    def require_context(self, what: str) -> None:
        if not self.stack():
            raise CudaError(f"{what}: CUDA_ERROR_INVALID_CONTEXT (no current context)")

    def require_live_context(self, what: str) -> None:
        if self.retained <= 0:
            raise CudaError(f"{what}: the context was detached (CUDA_ERROR_CONTEXT_IS_DESTROYED)")

    def destroyed(self, what: str) -> None:
        """A CUDA object's last reference is gone: destroyed, or leaked without a context."""
        if self.retained <= 0:
            self.leaks.append(f"{what} outlived its context")

    def allocate(self, buffer: bytearray) -> int:
        address = next(self._addresses)
        self.memory[address] = buffer
        return address

    def view(self, address: int, nbytes: int) -> memoryview:
        if address not in self.memory:
            raise CudaError(f"CUDA_ERROR_INVALID_VALUE: {address:#x} is not an allocation")
        buffer = self.memory[address]
        if nbytes > len(buffer):
            raise CudaError(
                f"CUDA_ERROR_INVALID_VALUE: {nbytes} bytes past a {len(buffer)} B block"
            )
        return memoryview(buffer)[:nbytes]


def make_pycuda(driver: Driver) -> types.ModuleType:
    """A ``pycuda.driver`` module over ``driver``."""

    class Context:
        def push(self) -> None:
            driver.stack().append(self)

        @staticmethod
        def pop() -> None:
            driver.stack().pop()

        def detach(self) -> None:
            driver.retained -= 1

    class Device:
        def __init__(self, number: int) -> None:
            self.number = number

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return "Orin" if driver.integrated else "Tesla T4"

        def compute_capability(self) -> tuple[int, int]:
            return (8, 7) if driver.integrated else (7, 5)

        def get_attribute(self, attr: int) -> int:
            return self.get_attributes()[attr]

        def get_attributes(self) -> dict[int, int]:
            return {1: int(driver.integrated), 2: 1, 3: 8 if driver.integrated else 40}

        def retain_primary_context(self) -> Context:
            driver.retained += 1
            return Context()

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            driver.require_context("cuMemAlloc")
            self.address = driver.allocate(bytearray(nbytes))

        def __int__(self) -> int:
            return self.address

        def free(self) -> None:
            driver.require_live_context("cuMemFree")
            del driver.memory[self.address]

    class HostAllocation(bytearray):
        mapped_address: int | None = None

        def get_device_pointer(self) -> int:
            if self.mapped_address is None:
                raise CudaError("cuMemHostGetDevicePointer: allocation is not DEVICEMAP")
            return self.mapped_address

        def free(self) -> None:
            driver.require_live_context("cuMemFreeHost")
            if self.mapped_address is not None:
                del driver.memory[self.mapped_address]

    def pagelocked_empty(
        shape: tuple[int, ...], dtype: npt.DTypeLike, order: str = "C", mem_flags: int = 0
    ) -> npt.NDArray[Any]:
        driver.require_context("cuMemHostAlloc")
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        allocation = HostAllocation(nbytes)
        if mem_flags & host_alloc_flags.DEVICEMAP:
            allocation.mapped_address = driver.allocate(allocation)
        return np.ndarray(shape, dtype, buffer=allocation)

    class Stream:
        _handles = itertools.count(0x1000)

        def __init__(self, flags: int = 0) -> None:
            self.handle = next(self._handles)
            self.pending: list[Callable[[], None]] = []
            streams[self.handle] = self

        def __del__(self) -> None:
            driver.destroyed("stream")

        def enqueue(self, work: Callable[[], None]) -> None:
            self.pending.append(work)

        def drain(self, upto: int | None = None) -> None:
            count = len(self.pending) if upto is None else upto
            work, self.pending = self.pending[:count], self.pending[count:]
            for item in work:
                item()

        def synchronize(self) -> None:
            driver.require_context("cuStreamSynchronize")
            self.drain()

    # Weak: a registry entry must not keep a stream alive past its last real reference.
    streams: weakref.WeakValueDictionary[int, Stream] = weakref.WeakValueDictionary()

    class Event:
        def __init__(self, flags: int = 0) -> None:
            self.flags = flags
            self.stream: Stream | None = None
            # Identifies the latest record: an earlier one still queued completes nothing.
            self.recording: object | None = None
            self.completed_at: float | None = None

        def __del__(self) -> None:
            driver.destroyed("event")

        def record(self, stream: Stream | None = None) -> Event:
            assert stream is not None
            driver.require_context("cuEventRecord")
            recording = object()
            self.stream, self.recording, self.completed_at = stream, recording, None

            def complete() -> None:
                if self.recording is recording:
                    self.completed_at = time.perf_counter()

            stream.enqueue(complete)
            return self

        def synchronize(self) -> Event:
            driver.require_context("cuEventSynchronize")
            while self.stream is not None and self.completed_at is None and self.stream.pending:
                self.stream.drain(1)
            return self

        def time_since(self, event: Event) -> float:
            """Milliseconds from ``event`` to this one (``cuEventElapsedTime(event, self)``)."""
            driver.require_context("cuEventElapsedTime")
            if any(e.flags & event_flags.DISABLE_TIMING or e.stream is None for e in (event, self)):
                raise CudaError("cuEventElapsedTime: CUDA_ERROR_INVALID_HANDLE")
            start, end = event.completed_at, self.completed_at
            if start is None or end is None:
                raise CudaError("cuEventElapsedTime: CUDA_ERROR_NOT_READY")
            return (end - start) * 1000

    def _host_to_device(dest: Any, src: npt.NDArray[Any], stream: Stream) -> None:
        driver.require_context("cuMemcpyHtoDAsync")
        address, nbytes = int(dest), src.nbytes

        def copy() -> None:
            driver.view(address, nbytes)[:] = src.tobytes()

        stream.enqueue(copy)

    def _device_to_host(dest: npt.NDArray[Any], src: Any, stream: Stream) -> None:
        driver.require_context("cuMemcpyDtoHAsync")
        address, nbytes = int(src), dest.nbytes

        def copy() -> None:
            dest[...] = np.frombuffer(driver.view(address, nbytes), dest.dtype).reshape(dest.shape)

        stream.enqueue(copy)

    host_alloc_flags = types.SimpleNamespace(PORTABLE=1, DEVICEMAP=2, WRITECOMBINED=4)
    event_flags = types.SimpleNamespace(DEFAULT=0, BLOCKING_SYNC=1, DISABLE_TIMING=2)
    cuda = types.ModuleType("pycuda.driver")
    cuda.__dict__.update(
        Error=CudaError,
        Context=Context,
        Device=Device,
        Stream=Stream,
        Event=Event,
        DeviceAllocation=DeviceAllocation,
        init=lambda flags=0: None,
        mem_alloc=DeviceAllocation,
        pagelocked_empty=pagelocked_empty,
        memcpy_htod_async=_host_to_device,
        memcpy_dtoh_async=_device_to_host,
        event_flags=event_flags,
        host_alloc_flags=host_alloc_flags,
        device_attribute=types.SimpleNamespace(
            INTEGRATED=1, CAN_MAP_HOST_MEMORY=2, MULTIPROCESSOR_COUNT=3
        ),
        streams=streams,
    )
    return cuda


class DataType(Enum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    UINT8 = 5


class TensorIOMode(Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DeviceMemory(Protocol):
    """How an engine reaches GPU memory and streams: the fake driver's, or real PyCUDA's."""

    def read(self, address: int, nbytes: int) -> bytes: ...

    def write(self, address: int, data: bytes) -> None: ...

    def enqueue(self, stream_handle: int, work: Callable[[], None]) -> None: ...


@dataclass
class FakeDeviceMemory:
    """The fake driver's memory; work runs when its stream is synchronized."""

    driver: Driver
    cuda: types.ModuleType

    def read(self, address: int, nbytes: int) -> bytes:
        return bytes(self.driver.view(address, nbytes))

    def write(self, address: int, data: bytes) -> None:
        self.driver.view(address, len(data))[:] = data

    def enqueue(self, stream_handle: int, work: Callable[[], None]) -> None:
        self.cuda.streams[stream_handle].enqueue(work)


def make_tensorrt(driver: Driver, memory: DeviceMemory) -> types.ModuleType:
    """A ``tensorrt`` module (runtime side only) whose engines run on ``memory``; ``driver``
    records executions."""

    class Logger:
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    class ExecutionContext:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
            spec = self.engine.specs[name]
            low, _, high = self.engine.profile
            dims = tuple(int(d) for d in shape)
            fits = (
                spec.is_input
                and len(dims) == len(spec.shape)
                and all(d == s for d, s in zip(dims, spec.shape, strict=True) if s != -1)
                and all(lo <= d <= hi for d, lo, hi in zip(dims, low, high, strict=True))
            )
            if fits:
                self.shapes[name] = dims
            return fits

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            spec = self.engine.specs[name]
            if spec.is_input:
                return self.shapes.get(name, spec.shape)
            if not self.all_inputs_set():
                return spec.shape
            return self.engine.output_shapes(self.shapes)[name]

        def all_inputs_set(self) -> bool:
            return all(n in self.shapes for n, s in self.engine.specs.items() if s.is_input)

        def set_tensor_address(self, name: str, address: int) -> bool:
            if name not in self.engine.specs:
                return False
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            if not self.all_inputs_set() or set(self.addresses) != set(self.engine.specs):
                return False
            shapes, addresses = dict(self.shapes), dict(self.addresses)
            memory.enqueue(stream_handle, lambda: self.engine.run(shapes, addresses))
            return True

    class Engine:
        def __init__(self, data: dict[str, Any], runtime: Runtime) -> None:
            self.runtime = runtime
            self.specs: dict[str, TensorSpec] = {
                name: TensorSpec(name, is_input, tuple(shape), dtype)
                for name, is_input, shape, dtype in data["io"]
            }
            self.profile = tuple(tuple(s) for s in data["profile"])
            self.session = ort.InferenceSession(data["graph"], providers=["CPUExecutionProvider"])

        @property
        def num_io_tensors(self) -> int:
            return len(self.specs)

        def get_tensor_name(self, index: int) -> str:
            return list(self.specs)[index]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return TensorIOMode.INPUT if self.specs[name].is_input else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self.specs[name].shape

        def get_tensor_dtype(self, name: str) -> DataType:
            return DataType[self.specs[name].dtype_name]

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
            if profile != 0 or name not in self.specs or not self.specs[name].is_input:
                return [(), (), ()]
            return list(self.profile)

        def create_execution_context(self) -> ExecutionContext:
            return ExecutionContext(self)

        def output_shapes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
            feeds = {n: np.zeros(s, _DTYPES[self.specs[n].dtype_name]) for n, s in shapes.items()}
            names = [o.name for o in self.session.get_outputs()]
            return {n: o.shape for n, o in zip(names, self.session.run(names, feeds), strict=True)}

        def run(self, shapes: dict[str, tuple[int, ...]], addresses: dict[str, int]) -> None:
            feeds = {}
            for name, shape in shapes.items():
                dtype = np.dtype(_DTYPES[self.specs[name].dtype_name])
                raw = memory.read(addresses[name], int(np.prod(shape)) * dtype.itemsize)
                feeds[name] = np.frombuffer(raw, dtype).reshape(shape).copy()
            names = [o.name for o in self.session.get_outputs()]
            for name, value in zip(names, self.session.run(names, feeds), strict=True):
                out = np.ascontiguousarray(value, _DTYPES[self.specs[name].dtype_name])
                memory.write(addresses[name], out.tobytes())
            driver.executions += 1

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, blob: bytes) -> Engine | None:
            try:
                data = json.loads(blob)
            except ValueError:
                return None
            if not isinstance(data, dict) or data.get("magic") != MAGIC:
                return None
            return Engine(data, self)

    trt = types.ModuleType("tensorrt")
    trt.__dict__.update(
        __version__="10.3.0.30",
        __file__="tensorrt/__init__.py",
        Logger=Logger,
        Runtime=Runtime,
        DataType=DataType,
        TensorIOMode=TensorIOMode,
    )
    return trt
