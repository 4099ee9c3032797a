"""``edgewatch bench track``: tracker cost per camera-frame at a given number of boxes and
cameras per batch.

Each camera is a synthetic scene (its own seed) of ``boxes`` objects walking at constant
speeds in a 1280x720 frame at 25 fps, with detector-like noise (box jitter, scores spread
over ByteTrack's high and low bands, a few boxes missed each frame); each object that leaves
the frame is replaced by a new one, so tracks start and end all the time. The timed call is
what the batch worker does with a batch holding one frame of each camera: ``track_batch``
(the tracker and the event state machines), and separately the bare ``update_batch``; the
times are per camera-frame (a batch's time over its cameras).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.config.model import CameraConfig
from daemon.config.secrets import Secret
from daemon.config.tracking import LineConfig, TrackingConfig
from daemon.postprocess.yolo import Detections
from daemon.track.bytetrack import ByteTracker, TrackInput, update_batch
from daemon.track.stage import CameraFrame, CameraTracking, track_batch

_W, _H, _FPS = 1280.0, 720.0, 25.0
_NAMES = ("person", "bicycle", "car")


@dataclass(frozen=True)
class TrackBenchRow:
    what: str
    cameras: int
    boxes: int
    frames: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    # CPU time of the calling thread: what the work costs when other processes share the cores.
    cpu_mean_ms: float


def _scene(boxes: int, frames: int, seed: int) -> list[Detections]:
    rng = np.random.default_rng(seed)
    pos = rng.uniform([0, 0], [_W, _H], size=(boxes, 2))
    vel = rng.normal(0, 4, size=(boxes, 2))
    size = rng.uniform([20, 40], [60, 120], size=(boxes, 2))
    out = []
    for _ in range(frames):
        pos += vel
        gone = (pos[:, 0] < 0) | (pos[:, 0] > _W) | (pos[:, 1] < 0) | (pos[:, 1] > _H)
        pos[gone] = rng.uniform([0, 0], [_W, _H], size=(int(gone.sum()), 2))
        seen = rng.random(boxes) > 0.05
        centre = pos[seen] + rng.normal(0, 1.0, size=(int(seen.sum()), 2))
        half = size[seen] / 2
        xyxy = np.concatenate([centre - half, centre + half], axis=1)
        scores = rng.uniform(0.15, 0.95, size=len(xyxy))
        classes = rng.integers(0, len(_NAMES), size=len(xyxy))
        out.append(
            Detections(xyxy.astype(np.float32), scores.astype(np.float32), classes.astype(np.int64))
        )
    return out


def _row(
    what: str,
    cameras: int,
    boxes: int,
    times: npt.NDArray[np.float64],
    cpu: npt.NDArray[np.float64],
) -> TrackBenchRow:
    """Per camera-frame figures from the batches' ``times`` and ``cpu`` seconds."""
    ms = times * 1000 / cameras
    return TrackBenchRow(
        what,
        cameras,
        boxes,
        len(ms),
        round(float(ms.mean()), 4),
        round(float(np.percentile(ms, 50)), 4),
        round(float(np.percentile(ms, 95)), 4),
        round(float(cpu.mean() * 1000 / cameras), 4),
    )


def _timed(
    step: Callable[[int, Sequence[Detections]], object], batches: list[tuple[Detections, ...]]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    wall = np.empty(len(batches))
    cpu = np.empty(len(batches))
    for i, batch in enumerate(batches):
        c0, t0 = time.thread_time(), time.perf_counter()
        step(i, batch)
        wall[i] = time.perf_counter() - t0
        cpu[i] = time.thread_time() - c0
    return wall, cpu


def run_track_bench(
    boxes: int, frames: int, cameras: int = 1, seed: int = 0
) -> list[TrackBenchRow]:
    """Time the bare tracker and the whole tracking stage on the same synthetic scenes, one
    per camera (seeds ``seed``, ``seed + 1``, ...), a batch of one frame per camera at a time."""
    batches = list(zip(*(_scene(boxes, frames, seed + c) for c in range(cameras)), strict=True))
    trackers = [ByteTracker(TrackingConfig(enabled=True)) for _ in range(cameras)]
    bare = _timed(
        lambda i, batch: update_batch(
            [
                TrackInput(t, i / _FPS, d.boxes, d.scores)
                for t, d in zip(trackers, batch, strict=True)
            ]
        ),
        batches,
    )
    line = LineConfig("middle", ((640.0, 0.0), (640.0, 720.0)))
    stages = [
        CameraTracking(
            CameraConfig(id=f"bench{c}", url=Secret("bench"), lines=(line,)),
            TrackingConfig(enabled=True),
            _NAMES,
        )
        for c in range(cameras)
    ]
    size = (int(_W), int(_H))
    full = _timed(
        lambda i, batch: track_batch(
            [(s, CameraFrame(i / _FPS, size, d)) for s, d in zip(stages, batch, strict=True)]
        ),
        batches,
    )
    # The first frames warm caches and start every track at once: not the steady state.
    skip = min(frames // 10, 50)
    return [
        _row("update_batch (bare tracker)", cameras, boxes, bare[0][skip:], bare[1][skip:]),
        _row(
            "track_batch (tracker + events + 1 line)",
            cameras,
            boxes,
            full[0][skip:],
            full[1][skip:],
        ),
    ]


def render_track_table(rows: list[TrackBenchRow]) -> str:
    """The rows as a fixed-width text table; times per camera-frame."""
    head = ("what", "cams", "boxes", "frames", "mean ms", "p50 ms", "p95 ms", "CPU ms")
    lines = ["{:<44} {:>4} {:>5} {:>6} {:>8} {:>8} {:>8} {:>8}".format(*head)]
    lines += [
        f"{r.what:<44} {r.cameras:>4} {r.boxes:>5} {r.frames:>6} "
        f"{r.mean_ms:>8.3f} {r.p50_ms:>8.3f} {r.p95_ms:>8.3f} {r.cpu_mean_ms:>8.3f}"
        for r in rows
    ]
    return "\n".join(lines)


def track_report_json(rows: list[TrackBenchRow]) -> dict[str, Any]:
    """The rows in the JSON layout of ``--json``."""
    return {"bench": "track", "rows": [asdict(r) for r in rows]}
