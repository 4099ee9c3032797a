"""The torch backend (ONNX graph run by PyTorch operators) against ONNX Runtime on the real
model and real frames. Needs PyTorch: skipped where it is not installed (the default venv);
the CUDA/FP16 variant carries the ``gpu`` marker."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bench.backend import real_frames
from daemon.batch.letterbox import LetterboxGeometry
from daemon.infer.backend import TimedTransfers, transfer_times
from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend
from daemon.postprocess.detect import detect_batch, infer_batch
from daemon.postprocess.match import Agreement, match
from daemon.postprocess.yolo import Detections, decode_kept, decode_one
from daemon.stills import detect_images, list_images
from tests.fixtures.data import COCO_EVAL

torch = pytest.importorskip("torch")

from daemon.infer.torch_backend import TorchBackend  # noqa: E402


def _geometry(hw: tuple[int, int]) -> LetterboxGeometry:
    return LetterboxGeometry(1.0, 0, 0, hw[1], hw[0])


def _compare(device: str, tol: float, model_onnx: Path, videos: list[Path]) -> None:
    ours = TorchBackend(model_onnx, max_batch=4, device=device)
    reference = OnnxRuntimeBackend(model_onnx, max_batch=4)
    try:
        for hw in ((640, 640), (384, 640)):
            frames = real_frames(videos, 3, hw)
            got = ours.infer(frames).copy()
            want = reference.infer(frames).copy()
            assert got.shape == want.shape
            rel = np.linalg.norm(got - want) / np.linalg.norm(want)
            assert rel < tol, f"{device} {hw}: relative error {rel}"
            for i in range(3):
                a = decode_one(got[i], _geometry(hw), 0.25, 0.7)
                b = decode_one(want[i], _geometry(hw), 0.25, 0.7)
                # FP16 may move a borderline score across the threshold; the bulk must agree.
                assert abs(len(a) - len(b)) <= max(1, len(b) // 10)
        # A second call of the same shape reuses the compiled program (and CUDA graph).
        again = ours.infer(frames).copy()
        np.testing.assert_allclose(again, got, rtol=0, atol=1e-3)
        assert ours.class_names[0] == "person"
    finally:
        ours.close()
        reference.close()


def test_torch_cpu_matches_onnxruntime(model_onnx: Path, videos: list[Path]) -> None:
    _compare("cpu", 1e-4, model_onnx, videos)


@pytest.mark.gpu
def test_torch_cuda_fp16_matches_onnxruntime(model_onnx: Path, videos: list[Path]) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _compare("cuda", 2e-2, model_onnx, videos)


def test_torch_rejects_wrong_batch(model_onnx: Path) -> None:
    backend = TorchBackend(model_onnx, max_batch=2, device="cpu")
    with pytest.raises(ValueError, match="batch must be"):
        backend.infer(np.zeros((3, 640, 640, 3), np.uint8))
    with pytest.raises(ValueError, match="batch must be"):
        backend.infer(np.zeros((1, 640, 640, 3), np.float32))


def test_specialisations_share_one_copy_of_the_weights(model_onnx: Path) -> None:
    import onnx

    from daemon.infer.torch_graph import OnnxGraph

    graph = OnnxGraph(onnx.load(str(model_onnx)))
    programs = [
        graph.specialise(torch.zeros(n, 3, h, w), torch.float32)
        for n, h, w in ((1, 640, 640), (4, 384, 640))
    ]

    def conv_weights(program: object) -> set[int]:
        steps = program._steps  # type: ignore[attr-defined]
        return {
            id(t) for s in steps for t in s.inputs if isinstance(t, torch.Tensor) and t.dim() == 4
        }

    first, second = (conv_weights(p) for p in programs)
    # The second shape reuses the first one's converted weights (shape-dependent constants
    # such as the anchor grid are folded anew, and are not 4-D).
    assert len(first) > 50
    assert second == first


def _same_detections(got: Detections, want: Detections) -> None:
    np.testing.assert_array_equal(got.class_ids, want.class_ids)
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.boxes, want.boxes, rtol=0, atol=1e-3)


def test_device_nms_matches_the_host_decoder(model_onnx: Path, videos: list[Path]) -> None:
    """The backend's own decode + NMS gives exactly what the numpy decoder gives on the same
    head, per image and in the same order, including the ``max_det`` cut and empty frames."""
    backend = TorchBackend(model_onnx, max_batch=4, device="cpu")
    try:
        frames = real_frames(videos, 4, (384, 640))
        frames[2] = 114  # a grey frame: nothing found
        geometries = [LetterboxGeometry(0.5, 0, 12, 1280, 720)] * 4
        head = backend.infer(frames).copy()
        for conf, max_det in ((0.25, 300), (0.1, 3), (0.25, 1)):
            kept = backend.infer_nms(frames, conf, 0.7, max_det)
            assert len(kept) == 4
            found = 0
            for i, g in enumerate(geometries):
                want = decode_one(head[i], g, conf, 0.7, max_det)
                _same_detections(decode_kept(kept[i], g), want)
                found += len(want)
            assert len(kept[2]) == 0
            assert found >= 3
        nothing = backend.infer_nms(frames, 0.99, 0.7, 300)
        assert [k.shape for k in nothing] == [(0, 6)] * 4
    finally:
        backend.close()


def _warm_then_serve(device: str, model_onnx: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = TorchBackend(model_onnx, max_batch=4, device=device)
    hws = [(384, 640), (640, 640)]
    try:
        with caplog.at_level(logging.INFO, logger="daemon.infer.torch_backend"):
            backend.warm_up(hws)
            warmed = len(caplog.records)
            caplog.clear()
            for h, w in hws:
                for n in range(1, 5):
                    backend.infer(np.zeros((n, h, w, 3), np.uint8))
        assert warmed > 0
        compiled = [r for r in caplog.records if "compiled" in r.getMessage()]
        assert not compiled, [r.__dict__.get("shape") for r in compiled]
    finally:
        backend.close()


def test_detect_batch_uses_the_device_nms(model_onnx: Path, videos: list[Path]) -> None:
    """The pipeline's and ``edgewatch detect``'s entry point takes the device path for the
    torch backend and gives the same detections as the raw head through the host decoder."""
    backend = TorchBackend(model_onnx, max_batch=2, device="cpu")
    try:
        frames = real_frames(videos, 2, (640, 640))
        geometries = [_geometry((640, 640))] * 2
        assert isinstance(infer_batch(backend, frames, 0.25, 0.7, 300), list)
        got = detect_batch(backend, frames, geometries, conf=0.25, iou=0.7, max_det=300)
        head = backend.infer(frames)
        for i, g in enumerate(geometries):
            _same_detections(got[i], decode_one(head[i], g, 0.25, 0.7))
    finally:
        backend.close()


@pytest.mark.gpu
def test_cuda_device_nms_agrees_with_the_cpu_path(model_onnx: Path) -> None:
    """FP16 on the GPU with NMS there, against the CPU path (ONNX Runtime FP32, numpy NMS),
    the daemon's letterbox on both, over the whole labelled evaluation set: F1 >= 0.99."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    images = list_images([COCO_EVAL / "images"])
    ours = TorchBackend(model_onnx, max_batch=8, device="cuda")
    reference = OnnxRuntimeBackend(model_onnx, max_batch=8)
    try:
        total = Agreement()
        pairs = zip(
            detect_images(ours, images, 0.25, 0.7, batch_size=8),
            detect_images(reference, images, 0.25, 0.7, batch_size=8),
            strict=True,
        )
        for (_, got), (_, want) in pairs:
            total += match(want, got)
    finally:
        ours.close()
        reference.close()
    assert total.reference > 500
    assert total.f1 >= 0.99, total


def test_torch_cpu_warm_up_leaves_nothing_to_compile(
    model_onnx: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _warm_then_serve("cpu", model_onnx, caplog)


@pytest.mark.gpu
def test_torch_cuda_warm_up_leaves_nothing_to_compile(
    model_onnx: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _warm_then_serve("cuda", model_onnx, caplog)


def test_torch_cpu_reports_no_transfer_split(model_onnx: Path, videos: list[Path]) -> None:
    """Without CUDA there are no transfers: no split, rather than zeros standing in for it."""
    backend = TorchBackend(model_onnx, max_batch=2, device="cpu")
    try:
        assert isinstance(backend, TimedTransfers)
        frames = real_frames(videos, 2, (640, 640))
        backend.infer(frames)
        assert transfer_times(backend) is None
        backend.infer_nms(frames, 0.25, 0.7, 300)
        assert transfer_times(backend) is None
    finally:
        backend.close()


@pytest.mark.gpu
def test_torch_cuda_splits_a_batch_into_upload_compute_and_download(
    model_onnx: Path, videos: list[Path]
) -> None:
    """Both entry points report the three parts of their own call, each measured and, being
    consecutive, together no longer than the call; a thread that ran nothing has no split."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    backend = TorchBackend(model_onnx, max_batch=4, device="cuda")
    try:
        frames = real_frames(videos, 4, (640, 640))
        backend.warm_up([(640, 640)])
        runs: dict[str, Callable[[], object]] = {
            "infer": lambda: backend.infer(frames),
            "infer_nms": lambda: backend.infer_nms(frames, 0.25, 0.7, 300),
        }
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            wall_s = time.perf_counter() - started
            split = transfer_times(backend)
            assert split is not None, name
            assert min(split.upload_s, split.compute_s, split.download_s) > 0, (name, split)
            assert split.upload_s + split.compute_s + split.download_s <= wall_s, (name, split)
        with ThreadPoolExecutor(1) as other:
            assert other.submit(transfer_times, backend).result() is None
    finally:
        backend.close()
