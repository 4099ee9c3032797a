"""ONNX Runtime backend: the default, runs anywhere (CPU provider), CUDA/TensorRT providers
where the installed onnxruntime build has them.

Two input layouts are accepted:

* the plain Ultralytics export, float32 (or float16) RGB 0..1 NCHW: the uint8 NHWC batch is
  converted into a buffer allocated once at load time (one fused cast/divide/transpose pass);
* a model with normalisation baked into the graph (``edgewatch export --uint8-input``), uint8
  RGB NHWC: the batch is handed over as it is.

A model with a fixed batch of 1 is served by looping over the batch, so any exported model
works; other fixed batch sizes are rejected with a hint to re-export with a dynamic batch.

On the CPU provider a batch of several cameras is split into slices that run at once,
each in its own session on its share of the cores (``split_sessions``). One session would
instead split every operator across the threads and wait for the slowest at each of the
graph's ~200 operators; when a camera decoder preempts one thread the others spin, and under
contention one session falls well below the split sessions' rate. So a batch that does not
divide evenly (three cameras on two sessions) is split unevenly rather than run in one
session, where three cameras would get half the frame rate of four. Only a batch smaller
than the number of sessions (one camera) runs in the one session with all threads, for its
latency.

An INT8 Q/DQ model with int8 (TensorRT-style) activations is re-encoded in memory to uint8
activations when it runs on the CPU provider (``engines.qdq``): ORT's x86 kernels fuse
only that form into integer ops; the int8 form would run unfused at ~0.6x FP32 speed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from daemon.config.model import ModelConfig
from daemon.infer.backend import (
    BackendError,
    FloatArray,
    UInt8Batch,
    check_batch,
    parse_class_names,
)
from engines.qdq import int8_activations_to_uint8, summarize

log = logging.getLogger(__name__)

_CPU = "CPUExecutionProvider"
_FLOAT_TYPES: dict[str, type[np.floating[Any]]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}
_UINT8 = "tensor(uint8)"
_RGB = 3
_BOX_COORDS = 4


@dataclass(frozen=True)
class _InputSpec:
    name: str
    # True: uint8 NHWC, normalised inside the graph; False: float NCHW 0..1.
    uint8_nhwc: bool
    dtype: type[np.generic]
    # Fixed batch size of the graph, None when the batch axis is dynamic.
    fixed_batch: int | None
    # (height, width) when the graph fixes them.
    fixed_hw: tuple[int, int] | None


class OnnxRuntimeBackend:
    """A YOLOv8 ONNX model in an ONNX Runtime session (see module docstring).

    Only one ``infer`` runs at a time (``max_inflight == 1``; a lock enforces it because the
    input conversion buffer is shared).
    """

    def __init__(
        self,
        path: Path,
        *,
        providers: Sequence[str] = (_CPU,),
        intra_op_threads: int = 0,
        split_sessions: int = 1,
        input_size: int = 640,
        max_batch: int = 8,
        optimized_model_out: Path | None = None,
        fuse_qdq: bool = True,
    ) -> None:
        """``split_sessions``: see the module docstring (0: one per available core, at most
        ``max_batch``; 1: never split). ``optimized_model_out``: where ORT writes the graph
        it actually runs after its optimizations (which kernels were fused), for inspection.
        ``fuse_qdq=False``: a Q/DQ model runs as its file is written, in float
        fake-quantization, instead of in ORT's integer kernels, whose results depend on the
        CPU's instruction set (``session.disable_quant_qdq``)."""
        if max_batch < 1:
            raise BackendError(f"max_batch must be >= 1, got {max_batch}")
        self._path = path
        usable = _usable_providers(providers)
        source = _model_source(path, usable) if fuse_qdq else str(path)
        self._session = _open_session(
            path, source, usable, intra_op_threads, optimized_model_out, fuse_qdq=fuse_qdq
        )
        self._cpu = usable[0] == _CPU
        split = _split_count(split_sessions, max_batch) if self._cpu else 1
        threads = max(1, (intra_op_threads or _cores()) // split)
        self._split = (
            [
                _open_session(path, source, usable, threads, None, fuse_qdq=fuse_qdq)
                for _ in range(split)
            ]
            if split > 1
            else []
        )
        self._pool = (
            ThreadPoolExecutor(split, thread_name_prefix="ort-split") if self._split else None
        )
        self._input = _input_spec(self._session, path)
        self._output_name, num_classes = _output_spec(self._session, path)
        self._class_names = parse_class_names(
            self._session.get_modelmeta().custom_metadata_map.get("names"), num_classes
        )
        self._num_classes = len(self._class_names)
        if self._input.fixed_hw is not None:
            self._input_hw = self._input.fixed_hw
            if self._input_hw != (input_size, input_size):
                log.info(
                    "model input size is fixed; using it instead of the configured size",
                    extra={
                        "model": str(path),
                        "model_hw": list(self._input_hw),
                        "configured": input_size,
                    },
                )
        else:
            self._input_hw = (input_size, input_size)
        if self._input.fixed_batch not in (None, 1):
            raise BackendError(
                f"{path}: input {self._input.name!r} has a fixed batch of "
                f"{self._input.fixed_batch}; re-export it with a dynamic batch "
                "(edgewatch export does) or with batch 1"
            )
        self._max_batch = max_batch
        h, w = self._input_hw
        # Conversion target for float models, allocated once; uint8 models need none.
        self._buffer: npt.NDArray[Any] | None = (
            None
            if self._input.uint8_nhwc
            else np.empty((max_batch, _RGB, h, w), dtype=self._input.dtype)
        )
        self._lock = threading.Lock()
        self._provider = self._session.get_providers()[0]
        log.info(
            "onnxruntime backend loaded",
            extra={
                "model": str(path),
                "provider": self._provider,
                "providers_requested": list(providers),
                "input": "uint8-nhwc" if self._input.uint8_nhwc else "float-nchw",
                "input_hw": list(self._input_hw),
                "batch": "fixed-1 (looped)" if self._input.fixed_batch == 1 else "dynamic",
                "max_batch": max_batch,
                "split_sessions": self.split_sessions,
                "classes": self._num_classes,
            },
        )

    @classmethod
    def from_config(cls, model: ModelConfig) -> OnnxRuntimeBackend:
        """Build from the ``model:`` section of the daemon config."""
        return cls(
            model.path,
            providers=model.providers,
            intra_op_threads=model.intra_op_threads,
            split_sessions=model.split_sessions,
            input_size=model.input_size,
            max_batch=model.max_batch,
        )

    @property
    def name(self) -> str:
        return f"onnxruntime:{self._provider}"

    @property
    def input_hw(self) -> tuple[int, int]:
        return self._input_hw

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def max_inflight(self) -> int:
        return 1

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    @property
    def dynamic_hw(self) -> bool:
        """Whether the graph accepts any input height/width up to ``input_hw`` (Ultralytics'
        minimal-padding "rect" letterbox for still images needs it)."""
        return self._input.fixed_hw is None

    @property
    def split_sessions(self) -> int:
        """How many sessions a batch of at least that many images is split across (1: none)."""
        return max(1, len(self._split))

    @property
    def uint8_input(self) -> bool:
        """Whether the graph itself normalises (uint8 NHWC input)."""
        return self._input.uint8_nhwc

    def infer(self, batch: UInt8Batch) -> FloatArray:
        """Run ``batch`` (``[n, H, W, 3]`` uint8 RGB) and return ``[n, 4 + nc, anchors]``."""
        check_batch(batch, self._max_batch, self._input_hw, self.dynamic_hw)
        with self._lock:
            session = self._session
            if session is None:
                raise BackendError("onnxruntime backend used after close()")
            n, h, w = batch.shape[:3]
            # A contiguous view of the front of the buffer (smaller h, w for rect inputs).
            feed = (
                None
                if self._buffer is None
                else self._buffer.reshape(-1)[: n * _RGB * h * w].reshape(n, _RGB, h, w)
            )
            if self._pool is None or n < len(self._split):
                out = self._run(session, batch, feed)
            else:
                # Slices differ by one image at most (3 over 2 sessions: 1 and 2).
                edges = [n * k // len(self._split) for k in range(len(self._split) + 1)]
                parts = [
                    self._pool.submit(
                        self._run,
                        split,
                        batch[lo:hi],
                        None if feed is None else feed[lo:hi],
                    )
                    for split, lo, hi in zip(self._split, edges, edges[1:], strict=False)
                ]
                out = np.concatenate([part.result() for part in parts])
        if out.shape[0] != n or out.shape[1] != _BOX_COORDS + self._num_classes:
            raise BackendError(
                f"{self._path}: output {list(out.shape)} does not match "
                f"[{n}, {_BOX_COORDS + self._num_classes}, anchors]"
            )
        return out.astype(np.float32, copy=False)

    def warm_up(self, hws: Iterable[tuple[int, int]]) -> None:
        """Run every batch size once at each size: GPU providers (cuDNN, TensorRT) pick or
        build kernels per shape on first use. The CPU provider's kernels do not depend on
        the shape that way, so there it does nothing."""
        if self._cpu:
            return
        for h, w in hws:
            images = np.zeros((self._max_batch, h, w, 3), np.uint8)
            for n in range(self._max_batch, 0, -1):
                self.infer(images[:n])

    def close(self) -> None:
        with self._lock:
            self._session = None
            self._split = []
            self._buffer = None
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def _run(
        self,
        session: ort.InferenceSession,
        images: UInt8Batch,
        feed: npt.NDArray[Any] | None,
    ) -> npt.NDArray[Any]:
        """Convert ``images`` into ``feed`` (float models) and run them in ``session``."""
        if feed is None:
            feed = np.ascontiguousarray(images)
        else:
            # Same arithmetic as Ultralytics (x / 255 in float), straight into the buffer.
            np.divide(
                images.transpose(0, 3, 1, 2), self._input.dtype(255), out=feed, casting="unsafe"
            )
        if self._input.fixed_batch == 1 and len(feed) > 1:
            return np.concatenate(
                [self._run_once(session, feed[i : i + 1]) for i in range(len(feed))]
            )
        return self._run_once(session, feed)

    def _run_once(self, session: ort.InferenceSession, feed: npt.NDArray[Any]) -> npt.NDArray[Any]:
        try:
            (out,) = session.run([self._output_name], {self._input.name: feed})
        except Exception as exc:  # onnxruntime raises its own (non-exported) exception types
            raise BackendError(f"{self._path}: inference failed: {exc}") from exc
        return np.asarray(out)


def _cores() -> int:
    """Cores this process may run on (a systemd CPUAffinity or taskset narrows them)."""
    return len(os.sched_getaffinity(0))


def _split_count(requested: int, max_batch: int) -> int:
    """How many sessions a batch is split across (``requested`` 0: one per core)."""
    return max(1, min(requested or _cores(), max_batch))


def _model_source(path: Path, usable: Sequence[str]) -> str | bytes:
    """What the sessions load: the file, or its in-memory uint8 re-encoding (CPU, int8 Q/DQ)."""
    if not path.is_file():
        raise BackendError(f"model file not found: {path}")
    try:
        source = _cpu_int8_as_uint8(path) if usable[0] == _CPU else None
    except Exception as exc:  # onnx.load raises DecodeError and friends
        raise BackendError(f"{path} is not a loadable ONNX model: {_first_line(exc)}") from exc
    return str(path) if source is None else source


def _open_session(
    path: Path,
    source: str | bytes,
    usable: Sequence[str],
    intra_op_threads: int,
    optimized_out: Path | None,
    *,
    fuse_qdq: bool,
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
    if optimized_out is not None:
        options.optimized_model_filepath = str(optimized_out)
    if not fuse_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    # ORT writes its own lines straight to stderr, outside the log format: only fatal ones
    # are let through. Provider fall-backs are reported by _usable_providers and a failed
    # run comes back as an exception, which the pipeline logs (rate-limited).
    options.log_severity_level = 4
    # Process-wide: the same goes for what ORT logs outside any session (provider set-up).
    ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=list(usable))
    except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile... are not importable types
        raise BackendError(f"{path} is not a loadable ONNX model: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cpu_int8_as_uint8(path: Path) -> bytes | None:
    """The uint8-activation re-encoding of an int8-activation Q/DQ model (serialized), or
    None for any other model, which ORT then loads from its file as usual."""
    model = onnx.load(str(path))
    activations = summarize(model).int8_activations
    if activations == 0:
        return None
    log.info(
        "int8 Q/DQ model re-encoded with uint8 activations for the ORT CPU integer kernels",
        extra={"model": str(path), "activations": activations},
    )
    serialized: bytes = int8_activations_to_uint8(model).SerializeToString()
    return serialized


def _usable_providers(requested: Sequence[str]) -> list[str]:
    """Requested providers this onnxruntime build has; unknown names are an operator error."""
    known = set(ort.get_all_providers())
    unknown = [p for p in requested if p not in known]
    if unknown:
        raise BackendError(
            f"unknown onnxruntime execution provider(s) {unknown}; known: {sorted(known)}"
        )
    available = set(ort.get_available_providers())
    usable = [p for p in requested if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        log.warning(
            "execution providers not available in this onnxruntime build; skipped",
            extra={"missing": missing, "available": sorted(available)},
        )
    if not usable:
        usable = [_CPU]
    return usable


def _static(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _input_spec(session: ort.InferenceSession, path: Path) -> _InputSpec:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise BackendError(
            f"{path}: expected one image input, found {[i.name for i in inputs]}; "
            "not a YOLOv8 detection export"
        )
    inp = inputs[0]
    shape = list(inp.shape)
    if len(shape) != 4:
        raise BackendError(
            f"{path}: input {inp.name!r} has rank {len(shape)} {shape}; a YOLOv8 model takes "
            "[N, 3, H, W] float or [N, H, W, 3] uint8"
        )
    dims = [_static(d) for d in shape]
    if inp.type in _FLOAT_TYPES and dims[1] == _RGB:
        hw = (dims[2], dims[3])
        return _InputSpec(
            inp.name,
            False,
            _FLOAT_TYPES[inp.type],
            dims[0],
            (hw[0], hw[1]) if hw[0] and hw[1] else None,
        )
    if inp.type == _UINT8 and dims[3] == _RGB:
        hw = (dims[1], dims[2])
        return _InputSpec(
            inp.name, True, np.uint8, dims[0], (hw[0], hw[1]) if hw[0] and hw[1] else None
        )
    raise BackendError(
        f"{path}: input {inp.name!r} is {inp.type} {shape}; expected float [N, 3, H, W] "
        "or uint8 [N, H, W, 3]"
    )


def _output_spec(session: ort.InferenceSession, path: Path) -> tuple[str, int | None]:
    """The head output's name and class count (None when its channel axis is symbolic)."""
    outputs = session.get_outputs()
    if not outputs:
        raise BackendError(f"{path}: the model has no outputs")
    out = outputs[0]
    shape = list(out.shape)
    if len(shape) != 3 or out.type not in _FLOAT_TYPES:
        raise BackendError(
            f"{path}: output {out.name!r} is {out.type} {shape}; expected a YOLOv8 head "
            "float [N, 4 + classes, anchors] (exports with NMS or end2end heads are not supported)"
        )
    channels, anchors = _static(shape[1]), _static(shape[2])
    if channels is not None and (
        channels <= _BOX_COORDS or (anchors is not None and channels > anchors)
    ):
        raise BackendError(
            f"{path}: output {out.name!r} has shape {shape}; expected [N, 4 + classes, anchors] "
            "(a transposed or NMS-ed head is not a plain YOLOv8 export)"
        )
    return out.name, None if channels is None else channels - _BOX_COORDS
