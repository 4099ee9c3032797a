"""JPEG crops of each tracked object's best frame, encoded on a thread of their own.

The batch worker only copies the crop out of the letterboxed batch image (the pixels the
model saw) when a track's best score improves, and offers it when an event goes out. The
offer never waits: beyond ``max_per_s`` per camera, or while ``_QUEUE_SIZE`` crops are
already waiting for the encoder, the snapshot is dropped and counted, so snapshots can never
delay detections. The encoder resizes to ``max_side``, encodes JPEG at ``quality``, hands
the payload to ``sink`` (the publisher) and/or writes ``<directory>/<camera>/<event id>.jpg``,
deleting the oldest files beyond ``directory_max_mb``.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from daemon.batch.images import BatchImages, host_copy
from daemon.batch.letterbox import LetterboxGeometry
from daemon.config.tracking import SnapshotConfig

log = logging.getLogger(__name__)

SNAPSHOT_SCHEMA_VERSION: Final = 1
_QUEUE_SIZE: Final = 16
_MiB: Final = 1024 * 1024
# ``sink(camera_id, payload)`` publishes one snapshot message.
SnapshotSink = Callable[[str, bytes], None]


def crop_from_batch(
    image: BatchImages, geometry: LetterboxGeometry, box: tuple[float, ...]
) -> npt.NDArray[np.uint8] | None:
    """A host copy of ``box`` (source-frame pixels) cut from the letterboxed RGB ``image``
    (on the host or a device: only the crop is downloaded)."""
    h, w = image.shape[:2]
    x1 = int(max(box[0] * geometry.scale + geometry.pad_left, 0))
    y1 = int(max(box[1] * geometry.scale + geometry.pad_top, 0))
    x2 = int(min(box[2] * geometry.scale + geometry.pad_left + 1, w))
    y2 = int(min(box[3] * geometry.scale + geometry.pad_top + 1, h))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return host_copy(image[y1:y2, x1:x2])


@dataclass(frozen=True, slots=True)
class SnapshotJob:
    camera: str
    event_id: str
    track_id: int
    capture_ts: float
    score: float
    box: tuple[float, float, float, float]
    crop: npt.NDArray[np.uint8]  # RGB
    config: SnapshotConfig


class _Bucket:
    """Token bucket: ``rate`` per second, bursts of up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class _Directory:
    """``<root>/<camera>/<event id>.jpg`` files, oldest deleted beyond a size bound."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        existing = (
            sorted(root.glob("*/*.jpg"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
        )
        self.files: deque[tuple[Path, int]] = deque((p, p.stat().st_size) for p in existing)
        self.total = sum(size for _, size in self.files)

    def write(self, camera: str, event_id: str, data: bytes) -> None:
        folder = self.root / camera
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{event_id}.jpg"
        path.write_bytes(data)
        self.files.append((path, len(data)))
        self.total += len(data)
        while self.total > self.max_bytes and self.files:
            old, size = self.files.popleft()
            old.unlink(missing_ok=True)
            self.total -= size


class Snapshotter:
    """The encoder thread and the per-camera drop/sent counters."""

    def __init__(self, sink: SnapshotSink, directory_share: float = 1.0) -> None:
        """``directory_share``: the part of a directory's ``directory_max_mb`` this process
        may fill, when several pipeline worker processes write into the same directory."""
        self._sink = sink
        self._share = directory_share
        self._queue: queue.Queue[SnapshotJob | None] = queue.Queue(_QUEUE_SIZE)
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._sent: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        self._directories: dict[Path, _Directory] = {}
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)
        self._thread.start()

    def offer(self, job: SnapshotJob) -> bool:
        """Queue ``job`` unless its camera is over its rate or the encoder is behind."""
        with self._lock:
            bucket = self._buckets.get(job.camera)
            if bucket is None or bucket.rate != job.config.max_per_s:
                bucket = self._buckets[job.camera] = _Bucket(job.config.max_per_s)
            allowed = bucket.take()
        if allowed:
            try:
                self._queue.put_nowait(job)
                return True
            except queue.Full:
                pass
        with self._lock:
            self._dropped[job.camera] = self._dropped.get(job.camera, 0) + 1
        return False

    def counts(self, camera: str) -> tuple[int, int]:
        """(sent, dropped) snapshots of ``camera`` so far."""
        with self._lock:
            return self._sent.get(camera, 0), self._dropped.get(camera, 0)

    def close(self, timeout: float = 5.0) -> None:
        """Encode what is queued (bounded by ``timeout``), then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._encode(job)
            except Exception:
                log.exception(
                    "snapshot failed", extra={"camera": job.camera, "event": job.event_id}
                )

    def _encode(self, job: SnapshotJob) -> None:
        cfg = job.config
        crop = job.crop
        scale = cfg.max_side / max(crop.shape[:2])
        if scale < 1:
            size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
            crop = np.asarray(cv2.resize(crop, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, cfg.quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        data = encoded.tobytes()
        if cfg.directory is not None:
            directory = self._directories.get(cfg.directory)
            if directory is None:
                directory = _Directory(
                    cfg.directory, int(cfg.directory_max_mb * _MiB * self._share)
                )
                self._directories[cfg.directory] = directory
            directory.write(job.camera, job.event_id, data)
        if cfg.publish:
            self._sink(job.camera, snapshot_payload(job, data, crop.shape[1], crop.shape[0]))
        with self._lock:
            self._sent[job.camera] = self._sent.get(job.camera, 0) + 1


def snapshot_payload(job: SnapshotJob, jpeg: bytes, width: int, height: int) -> bytes:
    """``<camera>/snapshot``: one event's best crop (schema ``snapshot.schema.json``)."""
    return json.dumps(
        {
            "schema_version": SNAPSHOT_SCHEMA_VERSION,
            "event_id": job.event_id,
            "camera": job.camera,
            "track_id": job.track_id,
            "capture_ts": round(job.capture_ts, 6),
            "score": round(job.score, 4),
            "box": [round(max(v, 0.0), 1) for v in job.box],
            "width": width,
            "height": height,
            "jpeg": base64.b64encode(jpeg).decode("ascii"),
        },
        separators=(",", ":"),
    ).encode()
