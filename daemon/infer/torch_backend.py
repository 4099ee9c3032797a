"""PyTorch backend (``backend: torch``, extra ``edgewatch[torch]``): CUDA hosts without TensorRT.

It runs the same YOLOv8 ``.onnx`` file as the ONNX Runtime backend, executed by PyTorch
operators (``daemon.infer.torch_graph``): Ultralytics' ``.pt`` checkpoint is a pickle of
Ultralytics classes and cannot be loaded without importing Ultralytics, which the daemon never
does, and TorchScript needs an Ultralytics export step per GPU and precision.

On CUDA: FP16 weights and activations (channels-last, cuDNN autotuned), ``max_inflight``
slots, each with its own CUDA stream, pinned host buffers and device buffers sized once for
the largest batch. The uint8 NHWC batch is copied to the GPU as uint8 (a quarter of the bytes
of float32) and normalised there; every batch shape gets a CUDA graph on first use, so a
batch is one H2D copy, one graph replay and one D2H copy. A batch already on the device (the
batcher's letterbox of NVDEC frames, ``DeviceInput``) replaces the H2D copy with a
device-to-device copy into the same input buffer, so it runs the same graphs. Timing events
recorded on the slot's stream between them split each batch into upload, compute and
download (``TimedTransfers``), read once the stream is synchronized anyway. Without CUDA it
runs FP32 on the CPU (for tests; the ONNX Runtime backend is the CPU path) and reports no
split.

Threads: ``infer`` is called from executor threads. A thread keeps its slot from its first
call on, because the returned array is a view of that slot's pinned output buffer and must
stay valid until the same thread's next call (``Backend`` contract).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import pairwise
from pathlib import Path

import onnx
import torch

from daemon.capture.device_gate import DeviceGate
from daemon.config.model import ModelConfig
from daemon.infer.backend import (
    BackendError,
    FloatArray,
    TransferTimes,
    UInt8Batch,
    check_batch,
    check_shape,
    parse_class_names,
)
from daemon.infer.slots import SlotPool
from daemon.infer.torch_graph import GraphError, OnnxGraph, SpecialisedProgram
from daemon.infer.torch_nms import kept_on_device, rows_to_host

log = logging.getLogger(__name__)

DEFAULT_SLOTS = 2
_RGB = 3
_BOX_COORDS = 4
# Eager runs before a capture: cuDNN autotuning and lazy allocations must not be captured.
_WARMUP_RUNS = 2


@dataclass
class _Compiled:
    program: SpecialisedProgram
    graph: torch.cuda.CUDAGraph | None = None
    output: torch.Tensor | None = None


class _Mark(IntEnum):
    """The points of a batch on its slot's stream, in stream order."""

    START = 0
    UPLOADED = 1
    COMPUTED = 2
    DOWNLOADED = 3


class _StreamClock:
    """One timing event per ``_Mark`` on a slot's stream. Recording costs no
    synchronization; the events are read after the batch's own synchronize."""

    def __init__(self, stream: torch.cuda.Stream) -> None:
        self._stream = stream
        self._events = [torch.cuda.Event(enable_timing=True) for _ in _Mark]

    def mark(self, point: _Mark) -> None:
        self._events[point].record(self._stream)

    def times(self, staging_s: float) -> TransferTimes:
        """The split of the batch marked last (its stream synchronized), ``staging_s`` being
        the host's copy of it into pinned memory."""
        elapsed_ms = [start.elapsed_time(end) for start, end in pairwise(self._events)]
        return TransferTimes.from_events(staging_s, elapsed_ms)


@dataclass
class _Slot:
    host_in: torch.Tensor
    dev_in: torch.Tensor
    host_out: torch.Tensor
    stream: torch.cuda.Stream | None
    pool: tuple[int, int] | None
    # None without CUDA: a CPU run has no transfers to time.
    clock: _StreamClock | None
    compiled: dict[tuple[int, int, int], _Compiled] = field(default_factory=dict)
    # Held by the slot's thread while it runs a batch, and by warm_up while it compiles on
    # the slot from another thread: a CUDA graph is never captured on a busy stream.
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The split of the slot's last successful batch (``TimedTransfers``).
    times: TransferTimes | None = None

    def mark(self, point: _Mark) -> None:
        if self.clock is not None:
            self.clock.mark(point)


class TorchBackend:
    """YOLOv8 ONNX graph on PyTorch (see module docstring)."""

    def __init__(
        self, path: Path, *, input_size: int = 640, max_batch: int = 8,
        slots: int = DEFAULT_SLOTS, device: str | None = None,
    ) -> None:  # fmt: skip
        if max_batch < 1:
            raise BackendError(f"max_batch must be >= 1, got {max_batch}")
        if not path.is_file():
            raise BackendError(f"model file not found: {path}")
        try:
            model = onnx.load(str(path))
            self._graph = OnnxGraph(model)
        except GraphError as exc:
            raise BackendError(f"{path}: {exc}") from exc
        except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...
            raise BackendError(f"{path} is not a loadable ONNX model: {exc}") from exc
        self._path = path
        self._num_classes, fixed_hw = _io_facts(model, path)
        names = {p.key: p.value for p in model.metadata_props}.get("names")
        self._class_names = parse_class_names(names, self._num_classes)
        self._input_hw = fixed_hw or (input_size, input_size)
        self._dynamic_hw = fixed_hw is None
        self._max_batch = max_batch
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._cuda = self._device.type == "cuda"
        if self._cuda and self._device.index is None:
            # Explicit, so a device batch's device can be compared with it.
            self._device = torch.device("cuda", torch.cuda.current_device())
        self._dtype = torch.float16 if self._cuda else torch.float32
        if self._cuda:
            torch.backends.cudnn.benchmark = True
        self._anchors = _anchor_count(self._input_hw)
        self._pool = SlotPool([self._make_slot() for _ in range(slots if self._cuda else 1)])
        self._lock = threading.Lock()
        self._compile_lock = threading.Lock()
        self._device_gate = DeviceGate()
        self._closed = False
        log.info(
            "torch backend loaded",
            extra={"model": str(path), "device": str(self._device), "dtype": str(self._dtype),
                   "max_batch": max_batch, "slots": self._pool.size,
                   "cuda_graphs": self._cuda, "torch": torch.__version__},
        )  # fmt: skip

    @classmethod
    def from_config(cls, model: ModelConfig) -> TorchBackend:
        return cls(
            model.path, input_size=model.input_size, max_batch=model.max_batch,
            slots=model.inflight_batches,
        )  # fmt: skip

    # -- Backend protocol -----------------------------------------------------------------

    @property
    def name(self) -> str:
        precision = "fp16" if self._dtype == torch.float16 else "fp32"
        return f"torch:{self._device.type}:{precision}"

    @property
    def input_hw(self) -> tuple[int, int]:
        return self._input_hw

    @property
    def device_gate(self) -> DeviceGate:
        """``DeviceInput``: closed while this backend captures a CUDA graph."""
        return self._device_gate

    @property
    def cuda_device(self) -> int | None:
        """``DeviceInput``: the CUDA device this backend runs on; None on the CPU."""
        # __init__ pins a CUDA device to its index.
        return self._device.index if self._cuda else None

    @property
    def dynamic_hw(self) -> bool:
        """Any stride-multiple height/width up to ``input_hw`` (the batcher's rect mode)."""
        return self._dynamic_hw

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
        """Run ``batch`` (``[n, H, W, 3]`` uint8 RGB); returns a view of pinned memory."""
        with self._running(batch) as (slot, out):
            slot.mark(_Mark.COMPUTED)
            host_out = slot.host_out[: out.numel()].view(out.shape)
            host_out.copy_(out, non_blocking=True)
            slot.mark(_Mark.DOWNLOADED)
        result: FloatArray = host_out.numpy()
        return result

    def infer_nms(
        self, batch: UInt8Batch, conf: float, iou: float, max_det: int
    ) -> list[FloatArray]:
        """Run ``batch`` and decode + NMS it on the device (``DeviceNms``): only the kept
        boxes are copied back."""
        return self._infer_nms(batch, conf, iou, max_det)

    def infer_nms_device(
        self, batch: torch.Tensor, conf: float, iou: float, max_det: int
    ) -> list[FloatArray]:
        """``infer_nms`` for a batch already on this backend's device (``DeviceInput``): it is
        copied device to device into the slot's input, after the calling thread's current
        stream (where its writes may still be queued)."""
        if batch.device != self._device:
            raise ValueError(f"batch is on {batch.device}, the model on {self._device}")
        return self._infer_nms(batch, conf, iou, max_det)

    def _infer_nms(
        self, batch: UInt8Batch | torch.Tensor, conf: float, iou: float, max_det: int
    ) -> list[FloatArray]:
        with self._running(batch) as (slot, out):
            rows, sizes = kept_on_device(out, conf, iou, max_det)
            slot.mark(_Mark.COMPUTED)
            kept = rows_to_host(rows, sizes)
            slot.mark(_Mark.DOWNLOADED)
        return kept

    def last_transfer_times(self) -> TransferTimes | None:
        """The calling thread's last batch split into upload, compute and download
        (``TimedTransfers``); None without CUDA."""
        slot = self._pool.current()
        return None if slot is None else slot.times

    @contextmanager
    def _running(self, batch: UInt8Batch | torch.Tensor) -> Iterator[tuple[_Slot, torch.Tensor]]:
        """Upload (or for a tensor on the device, copy) and run ``batch`` on this thread's
        slot; yields the slot and the head ``[n, 4 + nc, anchors]`` on the device, with the
        slot's stream current. Work queued inside has finished when the block exits. The block
        marks ``COMPUTED`` and ``DOWNLOADED`` on the slot; on success the slot's ``times``
        are set from the marks."""
        self._check(batch)
        if self._closed:
            raise BackendError("torch backend used after close()")
        slot = self._pool.slot_for_current_thread()
        with slot.lock:
            slot.times = None
            n, h, w = batch.shape[:3]
            size = n * h * w * _RGB
            staging = time.perf_counter()
            source = self._source(slot, batch)
            staged_s = time.perf_counter() - staging
            dev_in = slot.dev_in[:size].view(n, h, w, _RGB)
            stream = torch.cuda.stream(slot.stream) if slot.stream is not None else nullcontext()
            try:
                with stream:
                    slot.mark(_Mark.START)
                    dev_in.copy_(source, non_blocking=True)
                    slot.mark(_Mark.UPLOADED)
                    # Rows n..bucket hold stale frames: computed, never copied back.
                    bucket = self._bucket(n)
                    compiled = slot.compiled.get((bucket, h, w))
                    if compiled is None:
                        with self._compile_lock:
                            compiled = self._compile(slot, bucket, h, w)
                    if compiled.graph is not None:
                        compiled.graph.replay()
                        out = compiled.output
                    else:
                        images = slot.dev_in[: bucket * h * w * _RGB].view(bucket, h, w, _RGB)
                        out = self._forward(compiled.program, images)
                    assert out is not None
                    if out.shape[1] != _BOX_COORDS + self._num_classes or (
                        out.shape[2] > self._anchors
                    ):
                        raise BackendError(
                            f"{self._path}: unexpected output shape {list(out.shape)}"
                        )
                    yield slot, out[:n]
            finally:
                # Also after a failure: the slot's buffers are reused by the next call.
                if slot.stream is not None:
                    slot.stream.synchronize()
            if slot.clock is not None:
                slot.times = slot.clock.times(staged_s)

    def _check(self, batch: UInt8Batch | torch.Tensor) -> None:
        if isinstance(batch, torch.Tensor):
            check_shape(
                tuple(batch.shape), dtype=str(batch.dtype), uint8=batch.dtype == torch.uint8,
                max_batch=self._max_batch, input_hw=self._input_hw, dynamic_hw=self._dynamic_hw,
            )  # fmt: skip
        else:
            check_batch(batch, self._max_batch, self._input_hw, self._dynamic_hw)

    def _source(self, slot: _Slot, batch: UInt8Batch | torch.Tensor) -> torch.Tensor:
        """What the slot's input is copied from: a device batch itself, once the slot's
        stream waits for the caller's (where its writes may still be queued); a host batch
        staged into the slot's pinned buffer."""
        if isinstance(batch, torch.Tensor):
            if slot.stream is not None:
                slot.stream.wait_stream(torch.cuda.current_stream(self._device))
            return batch
        staged = slot.host_in[: batch.size].view(batch.shape)
        staged.numpy()[:] = batch
        return staged

    def warm_up(self, hws: Iterable[tuple[int, int]]) -> None:
        """Compile (and on CUDA capture the graph of) every batch bucket at each size on
        every slot: a compile costs up to a second, which must not stall a served batch."""
        for h, w in hws:
            for slot in self._pool.all_slots():
                for n in sorted({self._bucket(n) for n in range(1, self._max_batch + 1)}):
                    with slot.lock, self._compile_lock:
                        if (n, h, w) not in slot.compiled:
                            self._compile(slot, n, h, w)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._pool.release()
        if self._cuda:
            torch.cuda.synchronize(self._device)

    # -- internals ------------------------------------------------------------------------

    def _make_slot(self) -> _Slot:
        h, w = self._input_hw
        in_elems = self._max_batch * h * w * _RGB
        out_elems = self._max_batch * (_BOX_COORDS + self._num_classes) * self._anchors
        pin = self._cuda
        # torch hands out streams round-robin from a pool of 32 per priority; NVDEC readers
        # and letterboxes take theirs from the default pool, so a slot's stream comes from
        # the high-priority one, which only slots use: no other thread's work can land on a
        # stream while a graph is captured on it.
        stream = torch.cuda.Stream(self._device, priority=-1) if self._cuda else None
        return _Slot(
            host_in=torch.empty(in_elems, dtype=torch.uint8, pin_memory=pin),
            dev_in=torch.empty(in_elems, dtype=torch.uint8, device=self._device),
            host_out=torch.empty(out_elems, dtype=torch.float32, pin_memory=pin),
            stream=stream,
            pool=torch.cuda.graph_pool_handle() if self._cuda else None,
            clock=_StreamClock(stream) if stream is not None else None,
        )

    def _bucket(self, n: int) -> int:
        """The compiled batch size that runs ``n`` frames: the next power of two (capped).

        Every new shape costs a cuDNN autotune and a graph capture (up to a second, stalling
        that batch); buckets bound that to a few shapes, and padding is cheap on a GPU.
        """
        if not self._cuda:
            return n
        return min(1 << (n - 1).bit_length(), self._max_batch)

    def _forward(self, program: SpecialisedProgram, images: torch.Tensor) -> torch.Tensor:
        # NHWC uint8 viewed as NCHW is channels-last already: no layout copy before conv 1.
        x = images.permute(0, 3, 1, 2).to(self._dtype).div_(255.0)
        with torch.inference_mode():
            return program(x).float()

    def _compile(self, slot: _Slot, n: int, h: int, w: int) -> _Compiled:
        started = time.perf_counter()
        images = slot.dev_in[: n * h * w * _RGB].view(n, h, w, _RGB)
        example = images.permute(0, 3, 1, 2).to(self._dtype)
        with torch.inference_mode():
            program = self._graph.specialise(example, self._dtype, channels_last=self._cuda)
        compiled = _Compiled(program)
        if self._cuda:
            assert slot.stream is not None
            for _ in range(_WARMUP_RUNS):
                self._forward(program, images)
            slot.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            # thread_local: the other slots' threads keep replaying while this one captures.
            with (
                self._device_gate.capture(),
                torch.cuda.graph(
                    graph, pool=slot.pool, stream=slot.stream, capture_error_mode="thread_local"
                ),
            ):
                compiled.output = self._forward(program, images)
            compiled.graph = graph
        slot.compiled[(n, h, w)] = compiled
        log.info(
            "torch backend: batch shape compiled",
            extra={"shape": [n, h, w], "steps": program.steps,
                   "cuda_graph": compiled.graph is not None,
                   "ms": round((time.perf_counter() - started) * 1000, 1)},
        )  # fmt: skip
        return compiled


def _anchor_count(hw: tuple[int, int]) -> int:
    # YOLOv8 heads sit at strides 8, 16 and 32.
    return sum((hw[0] // s) * (hw[1] // s) for s in (8, 16, 32))


def _io_facts(model: onnx.ModelProto, path: Path) -> tuple[int, tuple[int, int] | None]:
    """Class count from the output's channel axis; fixed input (h, w) or None if dynamic."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    (inp,) = [i for i in graph.input if i.name not in initializers]
    in_dims = [d.dim_value or None for d in inp.type.tensor_type.shape.dim]
    if inp.type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) or (
        len(in_dims) != 4 or in_dims[1] != _RGB
    ):
        raise BackendError(
            f"{path}: the torch backend runs float [N, 3, H, W] YOLOv8 exports (the plain "
            "Ultralytics ONNX export); this input is not one"
        )
    out_dims = [d.dim_value or None for d in graph.output[0].type.tensor_type.shape.dim]
    if len(out_dims) != 3 or out_dims[1] is None or out_dims[1] <= _BOX_COORDS:
        raise BackendError(f"{path}: output {out_dims} is not a YOLOv8 head [N, 4 + classes, A]")
    fixed = (in_dims[2], in_dims[3]) if in_dims[2] and in_dims[3] else None
    return out_dims[1] - _BOX_COORDS, fixed


def load(model: ModelConfig) -> TorchBackend:
    """Entry point used by ``daemon.infer.factory``."""
    return TorchBackend.from_config(model)
