"""Load FP32 and INT8 models on ONNX Runtime CPU the way they run fast, and time them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx

from calib.qdq import int8_activations_to_uint8, summarize
from daemon.infer.backend import Backend
from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend


def ort_cpu_model(path: Path, workdir: Path) -> Path:
    """``path`` itself, or for a model with int8 activations its uint8 re-encoding written to
    ``workdir`` (ORT's x86 kernels fuse only uint8-activation Q/DQ into QLinear ops)."""
    model = onnx.load(str(path))
    if summarize(model).int8_activations == 0:
        return path
    out = workdir / f"{path.stem}.ort-u8.onnx"
    onnx.save(int8_activations_to_uint8(model), str(out))
    return out


def load_cpu_backend(path: Path, workdir: Path, threads: int, max_batch: int) -> Backend:
    """An ``OnnxRuntimeBackend`` on the CPU provider for ``path`` (see ``ort_cpu_model``)."""
    return OnnxRuntimeBackend(ort_cpu_model(path, workdir), intra_op_threads=threads,
                              max_batch=max_batch)


def interleaved_throughput(
    backends: Sequence[Backend],
    batch: npt.NDArray[np.uint8],
    rounds: int = 6,
    warmup: int = 2,
) -> list[float]:
    """Images/s of each backend on ``batch``: the backends take turns round by round so
    other load on a shared machine hits them alike; median of ``rounds``, warm-up excluded."""
    for backend in backends:
        for _ in range(warmup):
            backend.infer(batch)
    times: list[list[float]] = [[] for _ in backends]
    for _ in range(rounds):
        for k, backend in enumerate(backends):
            start = time.perf_counter()
            backend.infer(batch)
            times[k].append(time.perf_counter() - start)
    return [batch.shape[0] / float(np.median(t)) for t in times]
