"""Batches of frames already in device memory (an NVDEC reader's RGB tensors): letterboxed on
the device by the batcher, inferred by the torch backend from device memory, and read by the
snapshot crops and the drift check; each against the host path, on real frames and the real
model. Needs PyTorch: CPU tensors stand in for device frames on a machine without CUDA; the
CUDA variants carry the ``gpu`` marker."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.backend import raw_frame
from daemon.batch.batcher import Batch, BatchBuffer
from daemon.batch.images import host_copy
from daemon.capture.frame import FrameImage, FrameMeta
from daemon.capture.state import CameraState
from daemon.config.model import DriftConfig, ModelConfig
from daemon.infer.backend import BackendError, transfer_times
from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend
from daemon.monitor.drift import DriftMonitor
from daemon.postprocess.detect import detect_batch, infer_batch
from daemon.postprocess.match import Agreement, match
from daemon.publish.camera_stats import CameraStats
from daemon.track.snapshots import crop_from_batch

torch = pytest.importorskip("torch")

from daemon.infer.torch_backend import TorchBackend  # noqa: E402

CONF, IOU, MAX_DET = 0.25, 0.7, 300
INPUT_HW = (640, 640)
# 360p, 480p (854 wide), two 720p (a run of one size) and 1080p.
VIDEOS = (
    "traffic_cctv_road_360p.mp4", "crowd_overhead_480p.mp4", "pedestrians_street_720p.mp4",
    "traffic_highway_a_720p.mp4", "pedestrians_cctv_1080p.mp4",
)  # fmt: skip
# OpenCV's INTER_LINEAR rounds in fixed point, the device letterbox in float32: measured at
# most 1 apart, on at most 13% of the values (720p into 384x640).
MAX_ABS_DIFF = 1
MAX_MEAN_DIFF = 0.15
WAIT_S = 60.0


@pytest.fixture(
    scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
)  # fmt: skip
def device(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return name


@pytest.fixture(scope="module")
def frames(shared_dir: Path) -> list[np.ndarray]:
    """BGR frames of the videos' own sizes, an odd size and a portrait one."""
    decoded = [raw_frame(shared_dir / "videos" / name, 30) for name in VIDEOS]
    odd = cv2.resize(decoded[2], (517, 333), interpolation=cv2.INTER_AREA)
    portrait = np.ascontiguousarray(decoded[4][:, :800])
    return [*decoded, odd, portrait]


class HeldFrame:
    """A camera's newest frame as a reader hands it out (``FrameSource``): valid only inside
    the block; on release the reader writes its next frame into the same memory."""

    def __init__(self, camera_id: str, image: FrameImage) -> None:
        self.camera_id = camera_id
        self.image = image

    @contextmanager
    def acquire_latest(self) -> Iterator[tuple[FrameMeta, FrameImage] | None]:
        h, w = self.image.shape[:2]
        yield FrameMeta(self.camera_id, 0, time.time(), w, h), self.image
        self.image[...] = 0


def _assemble(
    frames: Sequence[np.ndarray], on_device: Sequence[bool], device: str, dynamic_hw: bool = True
) -> Batch:
    """One batch of ``frames``, each handed out as NVDEC does (an RGB tensor on ``device``)
    where ``on_device`` says so, else as OpenCV does (a BGR array)."""
    sources = [
        HeldFrame(
            f"cam{i}",
            torch.from_numpy(np.ascontiguousarray(f[..., ::-1])).to(device) if dev else f.copy(),
        )
        for i, (f, dev) in enumerate(zip(frames, on_device, strict=True))
    ]
    return BatchBuffer(8, INPUT_HW, dynamic_hw).assemble(sources)


def _host(frames: Sequence[np.ndarray], dynamic_hw: bool = True) -> Batch:
    batch = _assemble(frames, [False] * len(frames), "cpu", dynamic_hw)
    assert isinstance(batch.images, np.ndarray)
    return batch


def _assert_same_pixels(device_batch: Batch, host_batch: Batch) -> None:
    assert isinstance(device_batch.images, torch.Tensor)
    assert device_batch.geometries == host_batch.geometries
    got = host_copy(device_batch.images).astype(np.int16)
    assert got.shape == host_batch.images.shape
    diff = np.abs(got - host_batch.images)
    assert diff.max() <= MAX_ABS_DIFF
    assert diff.mean() < MAX_MEAN_DIFF


@pytest.mark.parametrize("dynamic_hw", [False, True], ids=["fixed", "rect"])
def test_device_letterbox_matches_the_host_one(
    frames: list[np.ndarray], device: str, dynamic_hw: bool
) -> None:
    """Every size alone, then all of them in one batch (the two 720p frames one run)."""
    for frame in frames:
        _assert_same_pixels(
            _assemble([frame], [True], device, dynamic_hw), _host([frame], dynamic_hw)
        )
    together = _assemble(frames, [True] * len(frames), device, dynamic_hw)
    _assert_same_pixels(together, _host(frames, dynamic_hw))
    assert str(together.images.device).startswith(device)


def test_mixed_batch_uploads_host_frames_to_the_device(
    frames: list[np.ndarray], device: str
) -> None:
    """A camera whose reader fell back to OpenCV (BGR arrays) beside NVDEC cameras."""
    on_device = [True, False, True, False, True, True, False]
    _assert_same_pixels(_assemble(frames, on_device, device), _host(frames))


def test_a_host_only_batch_stays_on_the_host(frames: list[np.ndarray]) -> None:
    assert isinstance(_host(frames[:2]).images, np.ndarray)


def test_device_batch_detects_what_the_host_batch_does(
    model_onnx: Path, frames: list[np.ndarray], device: str
) -> None:
    backend = TorchBackend(model_onnx, max_batch=8, device=device)
    try:
        host = _host(frames)
        want = detect_batch(
            backend, host.images, host.geometries, conf=CONF, iou=IOU, max_det=MAX_DET
        )
        total = Agreement()
        for on_device in ([True] * len(frames), [False, True] * 3 + [True]):
            batch = _assemble(frames, on_device, device)
            got = detect_batch(
                backend, batch.images, batch.geometries, conf=CONF, iou=IOU, max_det=MAX_DET
            )
            for w, g in zip(want, got, strict=True):
                total += match(w, g)
            # On CUDA the split is reported, its upload being the device-to-device copy.
            assert (transfer_times(backend) is not None) == (device == "cuda")
    finally:
        backend.close()
    assert total.reference > 50
    assert total.f1 >= 0.99, total


def test_device_batch_is_checked_like_a_host_one(model_onnx: Path) -> None:
    backend = TorchBackend(model_onnx, max_batch=2, device="cpu")
    try:
        with pytest.raises(ValueError, match="batch must be uint8"):
            backend.infer_nms_device(torch.zeros((3, 640, 640, 3), dtype=torch.uint8), CONF, IOU, 1)
        with pytest.raises(ValueError, match="batch must be uint8"):
            backend.infer_nms_device(torch.zeros((1, 640, 640, 3)), CONF, IOU, 1)
        with pytest.raises(ValueError, match="batch is on meta"):
            backend.infer_nms_device(
                torch.empty((1, 640, 640, 3), dtype=torch.uint8, device="meta"), CONF, IOU, 1
            )
    finally:
        backend.close()


def test_a_host_only_backend_refuses_a_device_batch(
    model_onnx: Path, frames: list[np.ndarray]
) -> None:
    backend = OnnxRuntimeBackend(model_onnx, max_batch=2)
    try:
        batch = _assemble(frames[:1], [True], "cpu")
        with pytest.raises(BackendError, match="device memory"):
            infer_batch(backend, batch.images, CONF, IOU, MAX_DET)
    finally:
        backend.close()


def test_snapshot_crop_of_a_device_batch(frames: list[np.ndarray], device: str) -> None:
    batch = _assemble(frames[2:3], [True], device)
    host = _host(frames[2:3])
    box = (100.0, 200.0, 700.0, 650.0)
    got = crop_from_batch(batch.images[0], batch.geometries[0], box)
    want = crop_from_batch(host.images[0], host.geometries[0], box)
    assert isinstance(got, np.ndarray)
    assert want is not None
    assert got.shape == want.shape
    assert np.abs(got.astype(np.int16) - want).max() <= MAX_ABS_DIFF
    before = host_copy(batch.images)
    got[:] = 0  # a copy: the batch keeps its pixels
    assert np.array_equal(host_copy(batch.images), before)


def _stats(camera: str) -> CameraStats:
    return CameraStats(camera, 0.0, 1.0, CameraState.STREAMING, 0.0, 0.0, 0, 0, 0, 0, 0, 0, 0,
                       None, None)  # fmt: skip


def test_drift_observes_a_device_batch(
    model_onnx: Path, frames: list[np.ndarray], device: str
) -> None:
    """Brightness computed on the device equals the host's on the same pixels, and the
    sampled frames (every one here) reach the FP32 reference and agree with it."""
    chosen = [frames[2], frames[4], frames[6]]
    batch = _assemble(chosen, [True] * len(chosen), device)
    # The same pixels on the host, as other cameras.
    on_host = Batch(
        host_copy(batch.images),
        tuple(dataclasses.replace(m, camera_id=f"host-{m.camera_id}") for m in batch.metas),
        batch.geometries,
    )
    deployed = TorchBackend(model_onnx, max_batch=8, device=device)
    try:
        detections = detect_batch(
            deployed, batch.images, batch.geometries, conf=CONF, iou=IOU, max_det=MAX_DET
        )
    finally:
        deployed.close()
    reference = OnnxRuntimeBackend(model_onnx, intra_op_threads=1, max_batch=1)
    drift = DriftConfig(enabled=True, reference_model=model_onnx, every_n_frames=1)
    monitor = DriftMonitor(
        reference, ModelConfig(path=model_onnx, confidence=CONF, drift=drift), None,
        queue_size=2 * len(chosen),
    )  # fmt: skip
    try:
        monitor.observe(batch, detections, CONF)
        monitor.observe(on_host, detections, CONF)
        deadline = time.monotonic() + WAIT_S
        while monitor.compared < 2 * len(chosen) and time.monotonic() < deadline:
            time.sleep(0.05)
        cameras = [m.camera_id for m in batch.metas]
        stats = monitor.attach({c: _stats(c) for c in cameras + [f"host-{c}" for c in cameras]})
    finally:
        monitor.close()
    assert monitor.compared == 2 * len(chosen)
    for camera in cameras:
        got, want = stats[camera].drift, stats[f"host-{camera}"].drift
        assert got is not None
        assert want is not None
        assert got.brightness is not None
        assert want.brightness is not None
        assert got.brightness == pytest.approx(want.brightness, abs=1e-3)
        assert got.samples == 1
        assert got.agreement == want.agreement
        assert got.agreement is not None
        assert got.agreement >= 0.9
