"""``edgewatch bench backend``: the bare backend's ceiling, images/s and latency per batch size.

Only ``Backend.infer`` is timed (for a GPU backend that includes the host<->device copies,
for ONNX Runtime the uint8->float conversion): no capture, letterbox or NMS. Warm-up calls
are excluded. Each batch size is measured on random pixels and on real letterboxed video
frames, which must give the same speed (a dense model's cost does not depend on content).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from daemon.batch.letterbox import letterbox_into
from daemon.config.model import BackendKind, ModelConfig
from daemon.infer.backend import Backend
from daemon.infer.factory import load_backend
from daemon.progress import Progress

WARMUP_CALLS = 3
MIN_CALLS = 5


@dataclass(frozen=True)
class BackendResult:
    """One (batch size, image kind) measurement."""

    batch: int
    images: str
    calls: int
    images_per_s: float
    latency_ms_p50: float
    latency_ms_p95: float


@dataclass(frozen=True)
class BackendReport:
    backend: str
    model: str
    input_hw: tuple[int, int]
    seconds_per_point: float
    results: tuple[BackendResult, ...]

    def point(self, batch: int, images: str = "real") -> BackendResult | None:
        """The measurement at ``batch``, or None if that size was not measured."""
        return next((r for r in self.results if r.batch == batch and r.images == images), None)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": "backend",
            "backend": self.backend,
            "model": self.model,
            "input_hw": list(self.input_hw),
            "seconds_per_point": self.seconds_per_point,
            "results": [dataclasses.asdict(r) for r in self.results],
        }


def real_frames(
    videos: Sequence[Path], count: int, input_hw: tuple[int, int]
) -> npt.NDArray[np.uint8]:
    """``count`` letterboxed RGB frames taken from ``videos`` in turn (frame 30 of each)."""
    out = np.empty((count, *input_hw, 3), np.uint8)
    for i in range(count):
        letterbox_into(raw_frame(videos[i % len(videos)], 30 + i // len(videos)), out[i])
    return out


def raw_frame(video: Path, index: int) -> npt.NDArray[np.uint8]:
    """Frame ``index`` of ``video`` as decoded (BGR, the video's own size)."""
    cap = cv2.VideoCapture(str(video))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        raise ValueError(f"cannot read frame {index} from {video}")
    return np.asarray(frame, np.uint8)


def time_backend(
    backend: Backend, images: npt.NDArray[np.uint8], seconds: float
) -> tuple[int, npt.NDArray[np.float64]]:
    """Call ``infer(images)`` for ``seconds`` after the warm-up; returns (calls, latencies s)."""
    for _ in range(WARMUP_CALLS):
        backend.infer(images)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(latencies) < MIN_CALLS or time.perf_counter() < deadline:
        started = time.perf_counter()
        backend.infer(images)
        latencies.append(time.perf_counter() - started)
    return len(latencies), np.asarray(latencies)


def run_backend_bench(
    model: Path,
    backend_kind: BackendKind,
    batches: Sequence[int],
    seconds: float,
    videos: Sequence[Path],
    *,
    input_hw: tuple[int, int] | None = None,
    intra_op_threads: int = 0,
) -> BackendReport:
    """Measure ``batches`` on random and real images; ``input_hw`` defaults to the model's."""
    config = ModelConfig(
        path=model, backend=backend_kind, max_batch=max(batches),
        intra_op_threads=intra_op_threads,
    )  # fmt: skip
    backend = load_backend(config)
    try:
        hw = input_hw or backend.input_hw
        rng = np.random.default_rng(0)
        real = real_frames(videos, max(batches), hw)
        results = []
        # Each point is timed for ``seconds``: the whole run takes many of them.
        with Progress("measuring", total=2 * len(batches), unit="point") as progress:
            for batch in batches:
                for kind, images in (
                    ("random", rng.integers(0, 256, (batch, *hw, 3), dtype=np.uint8)),
                    ("real", real[:batch]),
                ):
                    calls, lat = time_backend(backend, np.ascontiguousarray(images), seconds)
                    results.append(
                        BackendResult(
                            batch=batch,
                            images=kind,
                            calls=calls,
                            images_per_s=batch * calls / float(lat.sum()),
                            latency_ms_p50=float(np.percentile(lat, 50) * 1000),
                            latency_ms_p95=float(np.percentile(lat, 95) * 1000),
                        )
                    )
                    progress.advance()
        return BackendReport(backend.name, str(model), hw, seconds, tuple(results))
    finally:
        backend.close()


def render_backend_table(report: BackendReport) -> str:
    lines = [
        f"backend {report.backend}  model {Path(report.model).name}  input {report.input_hw[0]}x"
        f"{report.input_hw[1]}",
        f"{'batch':>5} {'images':<7} {'img/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'calls':>6}",
    ]
    for r in report.results:
        lines.append(
            f"{r.batch:>5} {r.images:<7} {r.images_per_s:>9.1f} {r.latency_ms_p50:>8.1f} "
            f"{r.latency_ms_p95:>8.1f} {r.calls:>6}"
        )
    return "\n".join(lines)
