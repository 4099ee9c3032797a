"""Throughput of backends on ONNX Runtime CPU, measured so a shared machine hits them alike.

INT8 models need no special loading: ``OnnxRuntimeBackend`` re-encodes int8-activation Q/DQ
models for the CPU integer kernels itself (``engines.qdq``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from daemon.infer.backend import Backend


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
