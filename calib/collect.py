"""``calib collect``: sample calibration frames from the configured cameras over time.

Every ``interval_s`` each camera offers its newest frame (through the daemon's own
``CameraSource`` reader processes). A frame too similar to one already kept from the same
camera (mean absolute difference of 32x32 grey thumbnails) is skipped. Sampling stops after
``max_duration_s`` or once ``4 * frames`` candidates are pooled; the ``frames`` kept are then
picked round-robin over (camera, brightness bucket) groups so that cameras and day/night
conditions are represented evenly rather than in proportion to how long they were seen.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from calib.images import MANIFEST_NAME
from daemon.capture.source import CameraSource
from daemon.config.model import AppConfig
from daemon.monitor.brightness import mean_luma
from daemon.progress import Progress

log = logging.getLogger(__name__)

_THUMB = (32, 32)
_BRIGHTNESS_BUCKETS = 8
_POOL_FACTOR = 4
_POLL_S = 0.05
_JPEG_QUALITY = 95


@dataclass(frozen=True)
class CollectOptions:
    frames: int
    interval_s: float = 2.0
    max_duration_s: float = 600.0
    # Mean absolute grey-level difference of thumbnails below which a frame is a duplicate.
    duplicate_threshold: float = 3.0


@dataclass
class _Candidate:
    camera: str
    ts: float
    brightness: float
    jpeg: bytes


def thumbnail(bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """32x32 grey thumbnail used for near-duplicate detection."""
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return cv2.resize(grey, _THUMB, interpolation=cv2.INTER_AREA).astype(np.float32)


def is_duplicate(
    thumb: npt.NDArray[np.float32], kept: list[npt.NDArray[np.float32]], threshold: float
) -> bool:
    return any(float(np.abs(thumb - k).mean()) < threshold for k in kept)


def select_spread(candidates: list[_Candidate], frames: int) -> list[_Candidate]:
    """Up to ``frames`` candidates, round-robin over (camera, brightness bucket) groups,
    each group in time order."""
    groups: dict[tuple[str, int], list[_Candidate]] = {}
    for c in sorted(candidates, key=lambda c: c.ts):
        bucket = min(int(c.brightness * _BRIGHTNESS_BUCKETS / 256), _BRIGHTNESS_BUCKETS - 1)
        groups.setdefault((c.camera, bucket), []).append(c)
    queues = [groups[k] for k in sorted(groups)]
    chosen: list[_Candidate] = []
    while len(chosen) < frames and any(queues):
        for queue in queues:
            if queue and len(chosen) < frames:
                # Spread picks over time within a group: take from alternating ends.
                chosen.append(queue.pop(0) if len(chosen) % 2 == 0 else queue.pop())
    return chosen


def _offer(
    source: CameraSource, kept: list[npt.NDArray[np.float32]], threshold: float
) -> tuple[bool, _Candidate | None]:
    """Look at ``source``'s newest frame: (whether it had one, a candidate if it is new).

    The frame is a view into the reader's shared memory; nothing that views it may outlive
    this call, or the segment cannot be unmapped when the camera stops."""
    with source.acquire_latest() as item:
        if item is None:
            return False, None
        meta, frame = item
        thumb = thumbnail(frame)
        if is_duplicate(thumb, kept, threshold):
            return True, None
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        brightness = mean_luma(frame)
    if not ok:
        return True, None
    kept.append(thumb)
    return True, _Candidate(source.camera_id, meta.capture_ts, brightness, jpeg.tobytes())


def collect(config: AppConfig, out: Path, options: CollectOptions) -> int:
    """Sample frames of ``config``'s enabled cameras into ``out``; returns frames written."""
    out.mkdir(parents=True, exist_ok=True)
    sources = [CameraSource(cam, config.capture) for cam in config.enabled_cameras]
    pool: list[_Candidate] = []
    target = _POOL_FACTOR * options.frames
    kept_thumbs: dict[str, list[npt.NDArray[np.float32]]] = {s.camera_id: [] for s in sources}
    next_due = {s.camera_id: 0.0 for s in sources}
    deadline = time.monotonic() + options.max_duration_s
    for source in sources:
        source.start()
    try:
        with Progress("sampling frames", total=target, unit="frame") as progress:
            while time.monotonic() < deadline and len(pool) < target:
                now = time.monotonic()
                for source in sources:
                    source.poll()  # state changes are logged by the source itself
                    if now < next_due[source.camera_id]:
                        continue
                    offered, candidate = _offer(
                        source, kept_thumbs[source.camera_id], options.duplicate_threshold
                    )
                    if offered:
                        next_due[source.camera_id] = now + options.interval_s
                    if candidate is not None:
                        pool.append(candidate)
                        progress.advance()
                # Progress lines also while every frame is a duplicate (a static scene).
                progress.advance(0)
                time.sleep(_POLL_S)
    finally:
        for source in sources:
            source.stop()
    chosen = select_spread(pool, options.frames)
    entries = []
    for n, c in enumerate(chosen):
        name = f"{c.camera}_{n:05d}.jpg"
        (out / name).write_bytes(c.jpeg)
        entries.append(
            {"file": name, "camera": c.camera, "ts": c.ts, "brightness": round(c.brightness, 2)}
        )
    (out / MANIFEST_NAME).write_text(
        json.dumps({"frames": entries, "candidates": len(pool), "created": time.time()}, indent=1)
    )
    log.info(
        "calibration frames collected", extra={"frames": len(entries), "candidates": len(pool)}
    )
    return len(entries)
