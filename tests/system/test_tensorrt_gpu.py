"""The real TensorRT path: build FP16 and INT8 engines from ../shared/models, detect through
them and compare with ONNX Runtime FP32 (F1 >= 0.95). Runs only with ``pytest -m tensorrt``
on a machine with TensorRT, PyCUDA and an NVIDIA GPU; skipped with the reason elsewhere."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from daemon.config.model import BackendKind, ModelConfig, Precision, TensorRTConfig, TensorRTRuntime
from daemon.infer.backend import Backend, transfer_times
from daemon.infer.cuda import GpuUnavailable, detect_platform, shares_host_memory
from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend
from daemon.postprocess.match import Agreement, match
from daemon.postprocess.yolo import Detections
from daemon.stills import detect_images, list_images
from engines.runtime import load_runtime, runtime_missing
from tests.fixtures.data import COCO_CALIB, COCO_EVAL, SHARED

pytestmark = pytest.mark.tensorrt

EVAL_IMAGES = 48
MIN_F1 = 0.95
IOU_MATCH = 0.5


@pytest.fixture(scope="module")
def gpu() -> None:
    missing = runtime_missing(TensorRTRuntime.TENSORRT)
    if missing is not None:
        pytest.skip(missing)
    try:
        detect_platform(load_runtime(TensorRTRuntime.TENSORRT))
    except GpuUnavailable as exc:
        pytest.skip(str(exc))


def detection_f1(reference: list[Detections], candidate: list[Detections]) -> float:
    """F1 of ``candidate`` against ``reference`` over all images (the daemon's matcher)."""
    total = Agreement()
    for ref, cand in zip(reference, candidate, strict=True):
        total = total + match(ref, cand, iou=IOU_MATCH)
    return total.f1


def _detect(backend: Backend, images: list[Path]) -> list[Detections]:
    return [d for _, d in detect_images(backend, images, conf=0.25, iou=0.7, batch_size=4)]


@pytest.fixture(scope="module")
def images() -> list[Path]:
    return list_images([COCO_EVAL / "images"])[:EVAL_IMAGES]


@pytest.fixture(scope="module")
def reference(images: list[Path]) -> list[Detections]:
    backend = OnnxRuntimeBackend(SHARED / "models" / "yolov8n.onnx", max_batch=4)
    try:
        return _detect(backend, images)
    finally:
        backend.close()


def _trt_model(cache: Path, precision: Precision, model: Path) -> ModelConfig:
    return ModelConfig(
        path=model,
        backend=BackendKind.TENSORRT,
        max_batch=4,
        tensorrt=TensorRTConfig(precision=precision, engine_cache_dir=cache, build_on_start=True),
    )


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


def test_fp16_engine_matches_onnxruntime(
    gpu: None, engine_cache: Path, images: list[Path], reference: list[Detections]
) -> None:
    from daemon.infer.tensorrt_backend import load

    backend = load(_trt_model(engine_cache, Precision.FP16, SHARED / "models" / "yolov8n.onnx"))
    try:
        assert backend.max_inflight >= 2
        assert detection_f1(reference, _detect(backend, images)) >= MIN_F1
    finally:
        backend.close()
    # Second load comes from the cache: no rebuild, same engine file.
    assert len(list(engine_cache.glob("fp16-*.engine"))) == 1


def test_int8_engine_matches_onnxruntime(
    gpu: None, engine_cache: Path, images: list[Path], reference: list[Detections]
) -> None:
    import tensorrt as trt

    from calib.feed import ImageFolderFeed
    from daemon.infer.cuda import context_current, retain_context
    from daemon.infer.tensorrt_backend import load
    from engines.builder import BuildRequest, build_engine
    from engines.cache import EngineCache, EngineKey
    from engines.onnx_info import read_onnx_info
    from engines.plan import BatchProfile, TrtVersion

    qdq = SHARED / "models" / "yolov8n_int8_qdq.onnx"
    model_path = qdq if qdq.is_file() else SHARED / "models" / "yolov8n.onnx"
    if not qdq.is_file() and TrtVersion.parse(trt.__version__).major >= 11:
        pytest.skip("no Q/DQ model in shared/models and TensorRT 11 has no calibrator")
    platform = detect_platform(trt)
    info = read_onnx_info(model_path)
    key = EngineKey(info.sha256, Precision.INT8, BatchProfile(1, 4, 4), (640, 640), platform)
    request = BuildRequest(
        onnx_path=model_path,
        precision=Precision.INT8,
        batch=key.batch,
        input_hw=key.input_hw,
        workspace_mb=2048,
        engine_path=EngineCache(engine_cache).engine_path(key),
        timing_cache=engine_cache / "timing.cache",
        calibration=None if qdq.is_file() else ImageFolderFeed(COCO_CALIB / "images"),
        calibration_cache=engine_cache / "calib.cache",
    )
    ctx = retain_context()
    try:
        with context_current(ctx):
            build_engine(request, platform, info, trt)
    finally:
        ctx.detach()
    backend = load(_trt_model(engine_cache, Precision.INT8, model_path))
    try:
        assert detection_f1(reference, _detect(backend, images)) >= MIN_F1
    finally:
        backend.close()


def test_concurrent_infer_from_two_threads_is_consistent(gpu: None, engine_cache: Path) -> None:
    """Two executor threads, each on its own slot, at the same time: every output must be the
    thread's own batch's. Only the worker threads call ``infer`` (a main-thread call would
    take a slot and leave one worker refused), and a worker's exception fails the test."""
    from daemon.infer.tensorrt_backend import load

    backend = load(_trt_model(engine_cache, Precision.FP16, SHARED / "models" / "yolov8n.onnx"))
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 255, (4, 640, 640, 3), dtype=np.uint8) for _ in range(2)]
    barrier = threading.Barrier(2)
    errors: list[str] = []
    runs = [0, 0]

    def worker(i: int) -> None:
        try:
            expected = backend.infer(batches[i]).copy()
            barrier.wait(60)
            for _ in range(20):
                out = backend.infer(batches[i])
                runs[i] += 1
                if not np.allclose(out, expected, atol=1e-2):
                    errors.append(f"thread {i} got another batch's output")
        except BaseException as exc:  # reported by the main thread
            errors.append(f"thread {i}: {exc!r}")

    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        backend.close()
    assert not errors
    assert runs == [20, 20]


def test_a_batch_is_split_into_upload_compute_and_download(gpu: None, engine_cache: Path) -> None:
    """Real timing events: upload, compute and download each measured and, being consecutive
    on the stream, together no longer than the call; zero-copy (Jetson) has no split."""
    from daemon.infer.tensorrt_backend import load

    backend = load(_trt_model(engine_cache, Precision.FP16, SHARED / "models" / "yolov8n.onnx"))
    batch = np.random.default_rng(0).integers(0, 255, (4, 640, 640, 3), dtype=np.uint8)
    try:
        started = time.perf_counter()
        backend.infer(batch)
        wall_s = time.perf_counter() - started
        split = transfer_times(backend)
    finally:
        backend.close()
    if shares_host_memory():
        assert split is None
        return
    assert split is not None
    assert min(split.upload_s, split.compute_s, split.download_s) > 0, split
    assert split.upload_s + split.compute_s + split.download_s <= wall_s, split
