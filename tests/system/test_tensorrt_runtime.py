"""edgewatch's real TensorRT backend driven through a runtime that behaves as TensorRT and
PyCUDA document (``tests/fakes/tensorrt_runtime.py``): no GPU here runs an engine, so the
engine's I/O comes from a real TensorRT-RTX build of the same graph and its outputs from
ONNX Runtime running that graph. Covers buffer sizing from the profile and the context,
asynchronous copies, the upload / compute / download split and its stages in the pipeline,
slots across threads, zero-copy on an integrated GPU, the release order at close, and the
factory path from the engine cache."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import tensorrt_rtx
from prometheus_client import generate_latest

from daemon.config.model import (
    AppConfig,
    BackendKind,
    CameraConfig,
    ModelConfig,
    MonitoringConfig,
    MqttConfig,
    Precision,
    TensorRTConfig,
    TensorRTRuntime,
)
from daemon.config.secrets import Secret
from daemon.infer.backend import BackendError, transfer_times
from daemon.infer.factory import load_backend
from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend
from daemon.infer.tensorrt_backend import TensorRTBackend
from daemon.monitor.metrics import DaemonMetrics
from daemon.monitor.stats import StatsCollector
from daemon.pipeline import Pipeline
from daemon.publish.mqtt import MqttPublisher
from engines.builder import BuildRequest, BuiltEngine, build_engine, network_io, prepare_model
from engines.cache import EngineCache, EngineKey, Platform, write_engine
from engines.export import add_uint8_input
from engines.onnx_info import read_onnx_info
from engines.plan import BatchProfile, BuildPlan, Int8Source
from tests.fakes.tensorrt_runtime import (
    Driver,
    FakeDeviceMemory,
    make_pycuda,
    make_tensorrt,
    write_engine_file,
)
from tests.harness.broker import Mosquitto
from tests.harness.daemon import decode_cost, metric_value

HW = (320, 320)
MAX_BATCH = 2
PROFILE = ((1, *HW, 3), (MAX_BATCH, *HW, 3), (MAX_BATCH, *HW, 3))
FP32 = BuildPlan(True, False, False, Int8Source.NONE)


@dataclasses.dataclass
class Fake:
    driver: Driver
    trt: object


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Fake:
    driver = Driver()
    cuda = make_pycuda(driver)
    trt = make_tensorrt(driver, FakeDeviceMemory(driver, cuda))
    pycuda = type(sys)("pycuda")
    pycuda.driver = cuda  # type: ignore[attr-defined]
    for name, module in (("pycuda", pycuda), ("pycuda.driver", cuda), ("tensorrt", trt)):
        monkeypatch.setitem(sys.modules, name, module)
    return Fake(driver, trt)


@pytest.fixture(scope="module")
def built(model_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltEngine, Path]:
    """A real TensorRT-RTX build at 320x320 and the prepared graph it was built from."""
    folder = tmp_path_factory.mktemp("rtx")
    platform = Platform(tensorrt_rtx.__version__, "Tesla T4", (7, 5), TensorRTRuntime.TENSORRT_RTX)
    request = BuildRequest(
        model_onnx, Precision.FP32, BatchProfile(1, MAX_BATCH, MAX_BATCH), HW, 256,
        folder / "rtx.engine", None,
    )  # fmt: skip
    engine = build_engine(request, platform, read_onnx_info(model_onnx), tensorrt_rtx)
    graph = folder / "prepared.onnx"
    onnx.save(prepare_model(read_onnx_info(model_onnx), HW, FP32), str(graph))
    return engine, graph


@pytest.fixture(scope="module")
def frames(shared_dir: Path) -> np.ndarray:
    import cv2

    from daemon.stills import read_image

    images = sorted((shared_dir / "datasets" / "coco_eval" / "images").glob("*.jpg"))[:MAX_BATCH]
    rgb = [cv2.cvtColor(read_image(p), cv2.COLOR_BGR2RGB) for p in images]
    return np.stack([cv2.resize(im, HW[::-1]) for im in rgb])


@pytest.fixture(scope="module")
def reference(model_onnx: Path, frames: np.ndarray) -> np.ndarray:
    backend = OnnxRuntimeBackend(model_onnx, max_batch=MAX_BATCH, input_size=HW[0])
    try:
        return backend.infer(frames).copy()
    finally:
        backend.close()


def _engine(tmp_path: Path, built: tuple[BuiltEngine, Path]) -> Path:
    engine, graph = built
    path = tmp_path / "fake.engine"
    write_engine_file(path, engine.io, PROFILE, graph)
    return path


def _backend(fake: Fake, engine: Path, **kwargs: object) -> TensorRTBackend:
    args: dict[str, object] = {"names": None, "input_hw": HW, "max_batch": MAX_BATCH}
    args.update(kwargs)
    return TensorRTBackend(engine, fake.trt, **args)  # type: ignore[arg-type]


def test_outputs_match_onnxruntime_and_everything_is_released(
    fake: Fake, tmp_path: Path, built: tuple[BuiltEngine, Path], frames: np.ndarray,
    reference: np.ndarray,
) -> None:  # fmt: skip
    backend = _backend(fake, _engine(tmp_path, built))
    warmups = fake.driver.executions
    out = backend.infer(frames)
    assert out.shape == (MAX_BATCH, 84, 2100)
    np.testing.assert_allclose(out, reference, rtol=1e-3, atol=1e-2)
    single = backend.infer(frames[1:])
    np.testing.assert_allclose(single[0], reference[1], rtol=1e-3, atol=1e-2)
    assert fake.driver.executions == warmups + 2
    backend.close()
    assert fake.driver.memory == {}
    assert fake.driver.leaks == []
    assert fake.driver.retained == 0


def test_engine_with_dynamic_height_and_width_is_sized_from_profile_and_context(
    fake: Fake, tmp_path: Path, model_onnx: Path, frames: np.ndarray, reference: np.ndarray
) -> None:
    """An engine built from a graph with dynamic H and W reports -1 for them, as NVIDIA's
    parser declares this graph's I/O; the backend must still size its buffers."""
    unpinned = add_uint8_input(onnx.load(str(model_onnx)))
    logger = tensorrt_rtx.Logger(tensorrt_rtx.Logger.ERROR)
    network = tensorrt_rtx.Builder(logger).create_network(0)
    assert tensorrt_rtx.OnnxParser(network, logger).parse(unpinned.SerializeToString())
    io = network_io(network)
    assert [t.shape for t in io] == [(-1, -1, -1, 3), (-1, 84, -1)]
    graph = tmp_path / "unpinned.onnx"
    onnx.save(unpinned, str(graph))
    engine = tmp_path / "dynamic.engine"
    write_engine_file(engine, io, PROFILE, graph)
    backend = _backend(fake, engine)
    try:
        np.testing.assert_allclose(backend.infer(frames), reference, rtol=1e-3, atol=1e-2)
    finally:
        backend.close()


def test_profile_below_the_batch_is_refused(
    fake: Fake, tmp_path: Path, built: tuple[BuiltEngine, Path]
) -> None:
    with pytest.raises(BackendError, match="accepts at most"):
        _backend(fake, _engine(tmp_path, built), max_batch=MAX_BATCH + 1)
    assert fake.driver.retained == 0


def test_zero_copy_on_an_integrated_gpu(
    fake: Fake, tmp_path: Path, built: tuple[BuiltEngine, Path], frames: np.ndarray,
    reference: np.ndarray,
) -> None:  # fmt: skip
    fake.driver.integrated = True
    backend = _backend(fake, _engine(tmp_path, built))
    try:
        # Every buffer the engine reads or writes is a mapped host buffer: nothing else on
        # the "device" but the inputs and outputs of the two slots.
        assert len(fake.driver.memory) == 2 * 2
        np.testing.assert_allclose(backend.infer(frames), reference, rtol=1e-3, atol=1e-2)
        # Nothing was copied, so there is no upload or download to report.
        assert transfer_times(backend) is None
    finally:
        backend.close()
    assert fake.driver.memory == {}


def test_a_batch_is_split_into_upload_compute_and_download(
    fake: Fake, tmp_path: Path, built: tuple[BuiltEngine, Path], frames: np.ndarray
) -> None:
    """Timing events around the copies, read after the batch's own wait: all three parts
    measured and, being consecutive, together no longer than the call."""
    backend = _backend(fake, _engine(tmp_path, built))
    try:
        assert transfer_times(backend) is None  # this thread has run nothing yet
        started = time.perf_counter()
        backend.infer(frames)
        wall_s = time.perf_counter() - started
        split = transfer_times(backend)
        assert split is not None
        assert min(split.upload_s, split.compute_s, split.download_s) > 0, split
        assert split.upload_s + split.compute_s + split.download_s <= wall_s, split
    finally:
        backend.close()
    assert fake.driver.leaks == []


@pytest.mark.mqtt
def test_the_pipeline_observes_the_transfers_as_stages(
    *, fake: Fake, tmp_path: Path, built: tuple[BuiltEngine, Path], model_onnx: Path,
    videos: list[Path], mosquitto: Mosquitto,
) -> None:  # fmt: skip
    """Through the pipeline (a file camera, a real broker): every batch of a backend that
    times its transfers is observed as upload, inference (its compute) and download, which
    together take no longer than the backend call the batch histogram keeps."""
    camera = CameraConfig(id="cam", url=Secret(str(min(videos, key=decode_cost))))
    config = AppConfig(
        cameras=(camera,),
        model=ModelConfig(path=model_onnx, input_size=HW[0], max_batch=MAX_BATCH),
        mqtt=MqttConfig(port=mosquitto.port),
        monitoring=MonitoringConfig(stats_interval_s=0.5, metrics_port=None),
        node="test",
    )
    backend = _backend(fake, _engine(tmp_path, built))
    sink = MqttPublisher(config.mqtt, config.node)
    metrics = DaemonMetrics(sink.counters)
    pipeline = Pipeline(config, backend, sink, StatsCollector(), metrics)

    def value(name: str, stage: str | None = None) -> float:
        labels = None if stage is None else f'stage="{stage}"'
        found = metric_value(generate_latest(metrics.registry).decode(), name, labels)
        return 0.0 if found is None else found

    async def main() -> None:
        stop = asyncio.Event()
        sink.start()
        pipeline.add_camera(camera)
        running = asyncio.create_task(pipeline.run(stop))
        deadline = time.monotonic() + 60
        while value("edgewatch_backend_batch_size_count") < 3 and time.monotonic() < deadline:
            if running.done():
                break
            await asyncio.sleep(0.2)
        stop.set()
        await running
        sink.stop()

    try:
        asyncio.run(main())
    finally:
        backend.close()
    batches = value("edgewatch_backend_batch_size_count")
    assert batches >= 3
    split = ("upload", "inference", "download")
    for stage in split:
        assert value("edgewatch_stage_seconds_count", stage) == batches, stage
        assert value("edgewatch_stage_seconds_sum", stage) > 0, stage
    total = sum(value("edgewatch_stage_seconds_sum", stage) for stage in split)
    assert total <= value("edgewatch_backend_batch_latency_seconds_sum")


def test_two_threads_each_get_their_own_slot(
    fake: Fake, tmp_path: Path, built: tuple[BuiltEngine, Path], frames: np.ndarray,
    reference: np.ndarray,
) -> None:  # fmt: skip
    backend = _backend(fake, _engine(tmp_path, built))
    batches = [frames[:1], frames[1:]]
    results: list[np.ndarray | BaseException] = [np.empty(0), np.empty(0)]
    barrier = threading.Barrier(2)

    def worker(i: int) -> None:
        try:
            barrier.wait(10)
            out = backend.infer(batches[i])
            barrier.wait(10)
            # Both threads have run; each one's output view must still hold its own batch.
            results[i] = out.copy()
        except BaseException as exc:  # surfaced in the main thread below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    backend.close()
    for i, result in enumerate(results):
        assert isinstance(result, np.ndarray), result
        np.testing.assert_allclose(result[0], reference[i], rtol=1e-3, atol=1e-2)


@pytest.mark.usefixtures("fake")
def test_factory_loads_the_cached_engine(
    tmp_path: Path, built: tuple[BuiltEngine, Path], model_onnx: Path, frames: np.ndarray,
    reference: np.ndarray,
) -> None:  # fmt: skip
    model = ModelConfig(
        path=model_onnx,
        backend=BackendKind.TENSORRT,
        input_size=HW[0],
        max_batch=MAX_BATCH,
        tensorrt=TensorRTConfig(engine_cache_dir=tmp_path / "cache", precision=Precision.FP32),
    )
    # What detect_platform reads from this (fake) machine.
    platform = Platform("10.3.0.30", "Tesla T4", (7, 5), multiprocessors=40)
    key = EngineKey(
        read_onnx_info(model_onnx).sha256, Precision.FP32,
        BatchProfile(1, MAX_BATCH, MAX_BATCH), HW, platform,
    )  # fmt: skip
    engine = EngineCache(tmp_path / "cache").engine_path(key)
    write_engine_file(tmp_path / "plan", built[0].io, PROFILE, built[1])
    write_engine(engine, key, (tmp_path / "plan").read_bytes(), model_onnx)
    backend = load_backend(model)
    try:
        assert backend.name == "tensorrt"
        assert backend.class_names[0] == "person"
        np.testing.assert_allclose(backend.infer(frames), reference, rtol=1e-3, atol=1e-2)
    finally:
        backend.close()
