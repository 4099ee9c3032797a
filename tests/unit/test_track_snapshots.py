"""Event snapshots: the best frame's crop as a bounded JPEG, off the detection path."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import numpy.typing as npt

from daemon.batch.letterbox import letterbox_into
from daemon.config.model import CameraConfig
from daemon.config.secrets import Secret
from daemon.config.tracking import SnapshotConfig, TrackingConfig
from daemon.postprocess.yolo import Detections
from daemon.publish.schemas import load_schema
from daemon.track.snapshots import SnapshotJob, Snapshotter
from daemon.track.stage import CameraTracking, FramePixels
from tests.fixtures.data import VIDEOS

NAMES = ("person", "bicycle", "car")


def _frame() -> npt.NDArray[np.uint8]:
    cap = cv2.VideoCapture(str(VIDEOS / "pedestrians_street_720p.mp4"))
    ok, image = cap.read()
    cap.release()
    assert ok
    return np.asarray(image, dtype=np.uint8)


class _Collect:
    """The publisher's side of the sink: keeps what it is handed."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.done = threading.Event()

    def __call__(self, camera: str, payload: bytes) -> None:
        self.messages.append((camera, payload))
        self.done.set()


def test_event_snapshot_is_the_best_crop_bounded_and_schema_valid(tmp_path: Path) -> None:
    frame = _frame()
    canvas = np.empty((640, 640, 3), dtype=np.uint8)
    geometry = letterbox_into(frame, canvas)
    snaps = SnapshotConfig(enabled=True, max_side=64, directory=tmp_path / "snaps")
    config = TrackingConfig(enabled=True, min_hits=2, snapshots=snaps)
    sink = _Collect()
    snapshotter = Snapshotter(sink)
    stage = CameraTracking(CameraConfig(id="cam", url=Secret("x")), config, NAMES, snapshotter)
    box = np.array([[500.0, 200.0, 620.0, 520.0]], dtype=np.float32)
    events = []
    for i, score in enumerate([0.5, 0.9, 0.7]):
        dets = Detections(box, np.array([score], dtype=np.float32), np.array([0]))
        events += stage.process(float(i), (1280, 720), dets, FramePixels(canvas, geometry))
    events += stage.close()
    snapshotter.close()
    assert [e.type.value for e in events] == ["new", "end"]
    # ``end`` brings no newer best frame than ``new`` had: one snapshot.
    assert len(sink.messages) == 1
    camera, payload = sink.messages[0]
    message = json.loads(payload)
    jsonschema.Draft202012Validator(load_schema("snapshot")).validate(message)
    assert camera == "cam"
    assert message["event_id"] == events[0].event_id
    assert message["score"] == 0.9  # the best frame, not the latest
    jpeg = base64.b64decode(message["jpeg"])
    image = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    assert max(image.shape[:2]) == 64
    assert image.shape[0] > image.shape[1]  # a standing person's box, not the whole frame
    assert (tmp_path / "snaps" / "cam" / f"{events[0].event_id}.jpg").read_bytes() == jpeg
    assert snapshotter.counts("cam") == (1, 0)


def test_offers_beyond_the_rate_or_a_busy_encoder_are_dropped_and_counted() -> None:
    release = threading.Event()
    handed: list[str] = []

    def slow_sink(camera: str, payload: bytes) -> None:
        release.wait(10)
        handed.append(camera)

    snapshotter = Snapshotter(slow_sink)
    crop = np.zeros((32, 16, 3), dtype=np.uint8)
    fast = SnapshotConfig(enabled=True, max_per_s=100)
    accepted = sum(
        snapshotter.offer(SnapshotJob("a", f"s-1-{i}", 1, 0.0, 0.9, (0, 0, 16, 32), crop, fast))
        for i in range(40)
    )
    # One job in the encoder plus the queue; the rest dropped at once, none waited.
    sent, dropped = snapshotter.counts("a")
    assert sent == 0  # the encoder is still inside the first one
    assert accepted + dropped == 40
    assert dropped >= 40 - 17 - 1
    slow = SnapshotConfig(enabled=True, max_per_s=1)
    rated = [
        snapshotter.offer(SnapshotJob("b", f"s-2-{i}", 2, 0.0, 0.9, (0, 0, 16, 32), crop, slow))
        for i in range(3)
    ]
    assert rated.count(True) <= 1
    release.set()
    snapshotter.close()
    assert handed.count("a") == accepted
    assert snapshotter.counts("a") == (accepted, dropped)


def _noise_config(directory: Path) -> tuple[npt.NDArray[np.uint8], SnapshotConfig]:
    noise = np.random.default_rng(0).integers(0, 255, size=(320, 320, 3), dtype=np.uint8)
    return noise, SnapshotConfig(
        enabled=True,
        publish=False,
        directory=directory,
        directory_max_mb=1,
        quality=100,
        max_per_s=100,
    )


def _write(snapshotter: Snapshotter, camera: str, count: int, config: SnapshotConfig,
           pixels: npt.NDArray[np.uint8]) -> None:  # fmt: skip
    for i in range(count):
        job = SnapshotJob(camera, f"s-{i}-1", i, 0.0, 0.9, (0, 0, 320, 320), pixels, config)
        assert snapshotter.offer(job)
        while snapshotter.counts(camera)[0] < i + 1:  # one at a time: the queue never fills
            threading.Event().wait(0.01)


def test_snapshot_directory_keeps_the_newest_within_its_bound(tmp_path: Path) -> None:
    noise, config = _noise_config(tmp_path)
    snapshotter = Snapshotter(_Collect())
    _write(snapshotter, "cam", 30, config, noise)
    snapshotter.close()
    files = sorted((tmp_path / "cam").glob("*.jpg"), key=lambda p: int(p.stem.split("-")[1]))
    sizes = [p.stat().st_size for p in files]
    assert snapshotter.counts("cam") == (30, 0)
    assert 1 < len(files) < 30
    assert sum(sizes) <= 1024 * 1024
    assert files[-1].name == "s-29-1.jpg"
    assert int(files[0].stem.split("-")[1]) == 30 - len(files)  # the oldest went first


def test_worker_processes_sharing_a_directory_keep_its_bound_together(tmp_path: Path) -> None:
    """Two pipeline workers (two snapshotters, half the bound each) fill one directory at
    the same time: together they stay within the bound, and each keeps its newest files."""
    noise, config = _noise_config(tmp_path)
    workers = {camera: Snapshotter(_Collect(), directory_share=0.5) for camera in ("a", "b")}
    for i in range(30):
        for camera, snapshotter in workers.items():
            job = SnapshotJob(camera, f"s-{i}-1", i, 0.0, 0.9, (0, 0, 320, 320), noise, config)
            assert snapshotter.offer(job)
            while snapshotter.counts(camera)[0] < i + 1:
                threading.Event().wait(0.01)
    for snapshotter in workers.values():
        snapshotter.close()
    files = list(tmp_path.glob("*/*.jpg"))
    assert sum(p.stat().st_size for p in files) <= 1024 * 1024
    for camera in workers:
        names = {p.name for p in files if p.parent.name == camera}
        assert "s-29-1.jpg" in names
        assert 1 < len(names) < 30
