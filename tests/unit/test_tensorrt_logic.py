"""TensorRT backend logic that needs neither TensorRT nor a GPU: the refusals of buffer
sizing, slot ownership across threads, engine choice from the cache, the ONNX Runtime
fallback, and CUDA failures as the operator sees them (against a fake ``pycuda.driver``).
The backend running an engine is in ``test_tensorrt_runtime.py``."""

from __future__ import annotations

import dataclasses
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from daemon.cli import main
from daemon.commands.exit_codes import EXIT_USAGE
from daemon.config.model import (
    BackendKind,
    ModelConfig,
    Precision,
    TensorRTConfig,
    TensorRTRuntime,
)
from daemon.infer.backend import BackendError, parse_class_names
from daemon.infer.cuda import GpuUnavailable, detect_platform, retain_context
from daemon.infer.factory import fallback_model, load_backend
from daemon.infer.slots import SlotPool
from daemon.infer.tensorrt_backend import (
    TensorRTBackend,
    buffer_specs,
    choose_engine,
    image_input,
    names_metadata,
    numpy_dtype,
)
from engines.cache import EngineCache, EngineKey, Platform, write_engine
from engines.onnx_info import file_sha256
from engines.plan import BatchProfile
from engines.runtime import runtime_missing
from engines.tensors import TensorSpec

ORIN = Platform("10.3.0.30", "Orin", (8, 7))
T4 = Platform("10.8.0.43", "Tesla T4", (7, 5))
IN = TensorSpec("images", True, (-1, 640, 640, 3), "UINT8")
OUT = TensorSpec("output0", False, (-1, 84, 8400), "FLOAT")
PROFILE_MAX = (8, 640, 640, 3)


def test_numpy_dtype_mapping() -> None:
    assert numpy_dtype("FLOAT") == np.float32
    assert numpy_dtype("HALF") == np.float16
    assert numpy_dtype("UINT8") == np.uint8
    assert numpy_dtype("INT64") == np.int64
    with pytest.raises(BackendError, match="BF16"):
        numpy_dtype("BF16")


@pytest.mark.parametrize(
    ("tensors", "profile_max", "match"),
    [
        ([TensorSpec("images", True, (-1, 3, 640, 640), "FLOAT"), OUT], PROFILE_MAX, "UINT8"),
        ([TensorSpec("images", True, (-1, 480, 480, 3), "UINT8"), OUT], PROFILE_MAX, "UINT8"),
        ([IN, OUT], (4, 640, 640, 3), "accepts at most"),
        ([IN, OUT], (8, 480, 480, 3), "accepts at most"),
        ([OUT], PROFILE_MAX, "0 inputs"),
    ],
)
def test_image_input_refuses_unusable_engines(
    tensors: list[TensorSpec], profile_max: tuple[int, ...], match: str
) -> None:
    with pytest.raises(BackendError, match=match):
        image_input(tensors, profile_max, 8, (640, 640))


def test_image_input_takes_dynamic_axes_from_the_profile() -> None:
    dynamic = TensorSpec("images", True, (-1, -1, -1, 3), "UINT8")
    assert image_input([dynamic, OUT], PROFILE_MAX, 8, (640, 640)) == (dynamic, PROFILE_MAX)


@pytest.mark.parametrize(
    ("outputs", "match"),
    [
        ({"output0": (8, 84, -1)}, "no concrete shape"),
        ({"output0": (8, 84)}, "one YOLOv8 head"),
    ],
)
def test_buffer_specs_refuse_outputs_that_cannot_be_sized(
    outputs: dict[str, tuple[int, ...]], match: str
) -> None:
    with pytest.raises(BackendError, match=match):
        buffer_specs([IN, OUT], PROFILE_MAX, outputs)


def test_buffer_sizes() -> None:
    specs = {s.name: s for s in buffer_specs([IN, OUT], PROFILE_MAX, {"output0": (8, 84, 8400)})}
    assert specs["images"].nbytes == 8 * 640 * 640 * 3
    assert specs["output0"].nbytes == 8 * 84 * 8400 * 4
    assert specs["output0"].shape_for(3) == (3, 84, 8400)


def test_slot_pool_binds_one_slot_per_thread() -> None:
    pool = SlotPool(["a", "b"])
    mine = pool.slot_for_current_thread()
    assert pool.slot_for_current_thread() == mine
    seen: list[str] = []
    started = threading.Event()
    release = threading.Event()

    def worker() -> None:
        seen.append(pool.slot_for_current_thread())
        seen.append(pool.slot_for_current_thread())
        started.set()
        release.wait(5)

    thread = threading.Thread(target=worker)
    thread.start()
    assert started.wait(5)
    assert seen[0] == seen[1] != mine
    errors: list[BaseException] = []

    def third() -> None:
        try:
            pool.slot_for_current_thread()
        except BackendError as exc:
            errors.append(exc)

    extra = threading.Thread(target=third)
    extra.start()
    extra.join(5)
    assert errors, "a third live thread must be refused, not handed a busy slot"
    release.set()
    thread.join(5)
    # The exited worker's slot is reclaimed for a new thread.
    extra = threading.Thread(target=lambda: seen.append(pool.slot_for_current_thread()))
    extra.start()
    extra.join(5)
    assert seen[-1] == seen[0]
    assert sorted(pool.all_slots()) == ["a", "b"]
    # Closing hands every slot back once, bound or free, and keeps none.
    assert sorted(pool.release()) == ["a", "b"]
    assert pool.all_slots() == []


def _model(tmp_path: Path, model_onnx: Path, **trt: object) -> ModelConfig:
    cfg = dataclasses.replace(TensorRTConfig(engine_cache_dir=tmp_path), **trt)  # type: ignore[arg-type]
    return ModelConfig(path=model_onnx, backend=BackendKind.TENSORRT, max_batch=4, tensorrt=cfg)


def test_choose_engine_hit_build_and_refusal(tmp_path: Path, model_onnx: Path) -> None:
    model = _model(tmp_path, model_onnx)
    with pytest.raises(BackendError, match="edgewatch build-engine") as refused:
        choose_engine(model, ORIN)
    assert "--batch 1:4:4" in str(refused.value)

    key = EngineKey(
        file_sha256(model_onnx), Precision.FP16, BatchProfile(1, 4, 4), (640, 640), ORIN
    )
    write_engine(EngineCache(tmp_path).engine_path(key), key, b"plan", model_onnx)
    choice = choose_engine(model, ORIN)
    assert not choice.needs_build
    assert choice.key == key

    # Same cache on a T4 with another TensorRT: never loaded, the reason names both sides.
    with pytest.raises(BackendError) as mismatch:
        choose_engine(model, T4)
    assert "TensorRT 10.3.0.30 on Orin" in str(mismatch.value)
    assert "TensorRT 10.8.0.43 on Tesla T4" in str(mismatch.value)

    building = choose_engine(_model(tmp_path, model_onnx, build_on_start=True), T4)
    assert building.needs_build
    assert building.engine != choice.engine


def test_choose_engine_rejects_profile_below_max_batch(tmp_path: Path, model_onnx: Path) -> None:
    with pytest.raises(BackendError, match="MAX below"):
        choose_engine(_model(tmp_path, model_onnx, batch_profile=(1, 2, 2)), ORIN)


def test_class_names_from_onnx_metadata(model_onnx: Path) -> None:
    names = parse_class_names(names_metadata(model_onnx), 80)
    assert len(names) == 80
    assert names[0] == "person"


def test_fallback_only_when_configured(tmp_path: Path, model_onnx: Path) -> None:
    assert fallback_model(_model(tmp_path, model_onnx)) is None
    ort_model = ModelConfig(path=model_onnx)
    assert fallback_model(ort_model) is None
    fallback = fallback_model(_model(tmp_path, model_onnx, fallback_to_onnxruntime=True))
    assert fallback is not None
    assert fallback.backend is BackendKind.ONNXRUNTIME
    assert fallback.path == model_onnx
    assert fallback.max_batch == 4


def test_factory_without_tensorrt_fails_or_falls_back(
    tmp_path: Path, model_onnx: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if runtime_missing(TensorRTRuntime.TENSORRT) is None:
        pytest.skip("TensorRT is installed here; this checks the machine without it")
    with pytest.raises(BackendError, match="fallback_to_onnxruntime"):
        load_backend(_model(tmp_path, model_onnx))
    backend = load_backend(_model(tmp_path, model_onnx, fallback_to_onnxruntime=True))
    try:
        assert backend.name.startswith("onnxruntime")
        out = backend.infer(np.full((1, 640, 640, 3), 114, np.uint8))
        assert out.shape == (1, 84, 8400)
    finally:
        backend.close()
    assert any(r.levelname == "ERROR" and "FALLING BACK" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "args",
    [["--batch", "4:2:8"], ["--batch", "x"], ["--workspace", "0"], ["--precision", "int4"]],
)
def test_build_engine_cli_rejects_bad_arguments(args: list[str], model_onnx: Path) -> None:
    argv = ["build-engine", "--model", str(model_onnx), "--precision", "fp16", *args]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == EXIT_USAGE


def test_build_engine_cli_missing_model_is_usage_error(tmp_path: Path) -> None:
    argv = ["build-engine", "--model", str(tmp_path / "none.onnx"), "--precision", "fp16"]
    assert main(argv) == EXIT_USAGE


@dataclasses.dataclass
class FakeDriver:
    """State behind the fake ``pycuda.driver``: live primary-context references and the
    driver errors to raise."""

    devices: int = 1
    init_error: str | None = None
    retain_error: str | None = None
    push_error: str | None = None
    retained: int = 0
    created: int = 0


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeDriver:
    """A fake TensorRT 10.3 and a PyCUDA driver for one Orin, only what daemon.infer.cuda calls."""
    driver = FakeDriver()

    class Error(Exception):
        pass

    class Context:
        def push(self) -> None:
            if driver.push_error is not None:
                raise Error(driver.push_error)

        def detach(self) -> None:
            driver.retained -= 1

    class Device:
        def __init__(self, number: int) -> None:
            self.number = number

        @staticmethod
        def count() -> int:
            return driver.devices

        def name(self) -> str:
            return ORIN.gpu_name

        def compute_capability(self) -> tuple[int, int]:
            return ORIN.compute_capability

        def get_attribute(self, attr: int) -> int:
            return self.get_attributes()[attr]

        def get_attributes(self) -> dict[int, int]:
            return {1: 1, 2: 1, 3: 16}

        def retain_primary_context(self) -> Context:
            if driver.retain_error is not None:
                raise Error(driver.retain_error)
            # The driver creates the primary context when its first reference is taken.
            driver.created += driver.retained == 0
            driver.retained += 1
            return Context()

    def init(flags: int = 0) -> None:
        if driver.init_error is not None:
            raise Error(driver.init_error)

    cuda = types.ModuleType("pycuda.driver")
    attributes = types.SimpleNamespace(INTEGRATED=1, CAN_MAP_HOST_MEMORY=2, MULTIPROCESSOR_COUNT=3)
    cuda.__dict__.update(
        Error=Error, Context=Context, Device=Device, init=init, device_attribute=attributes
    )
    pycuda = types.ModuleType("pycuda")
    pycuda.__dict__.update(driver=cuda)
    trt = types.ModuleType("tensorrt")
    trt.__dict__.update(__file__="tensorrt/__init__.py", __version__=ORIN.trt_version)
    for name, module in (("pycuda", pycuda), ("pycuda.driver", cuda), ("tensorrt", trt)):
        monkeypatch.setitem(sys.modules, name, module)
    return driver


def test_detect_platform_creates_no_context(
    fake_cuda: FakeDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "model"
    tree.write_bytes(b"NVIDIA Jetson Orin NX Engineering Reference Developer Kit\0")
    monkeypatch.setattr("daemon.infer.cuda.DEVICE_TREE_MODEL", tree)
    platform = detect_platform(sys.modules["tensorrt"])
    assert platform == dataclasses.replace(
        ORIN, board="NVIDIA Jetson Orin NX Engineering Reference Developer Kit", multiprocessors=16
    )
    assert fake_cuda.created == 0
    context = retain_context()
    assert (fake_cuda.created, fake_cuda.retained) == (1, 1)
    context.detach()
    assert fake_cuda.retained == 0


@pytest.mark.parametrize(
    ("driver", "match"),
    [
        (FakeDriver(init_error="cuInit failed: no CUDA-capable device"), "CUDA is not usable"),
        (FakeDriver(devices=0), "CUDA device 0 not found"),
        (FakeDriver(retain_error="cuDevicePrimaryCtxRetain failed: out of memory"), "out of"),
    ],
)
def test_driver_errors_are_gpu_unavailable(
    fake_cuda: FakeDriver, driver: FakeDriver, match: str
) -> None:
    fake_cuda.__dict__.update(dataclasses.asdict(driver))
    with pytest.raises(GpuUnavailable, match=match):
        retain_context()


def test_context_failure_is_a_backend_error_and_falls_back(
    tmp_path: Path, model_onnx: Path, fake_cuda: FakeDriver
) -> None:
    fake_cuda.retain_error = "cuDevicePrimaryCtxRetain failed: out of memory"
    unavailable = "TensorRT backend unavailable: CUDA is not usable: cuDevicePrimaryCtxRetain"
    engine = tmp_path / "x.engine"
    with pytest.raises(BackendError, match=unavailable):
        TensorRTBackend(
            engine, sys.modules["tensorrt"], names=None, input_hw=(640, 640), max_batch=4
        )
    # Building on start retains the context too; the build never starts.
    with pytest.raises(BackendError, match=unavailable):
        load_backend(_model(tmp_path, model_onnx, build_on_start=True))
    assert not list(tmp_path.glob("*.engine"))

    here = detect_platform(sys.modules["tensorrt"])
    key = EngineKey(
        file_sha256(model_onnx), Precision.FP16, BatchProfile(1, 4, 4), (640, 640), here
    )
    write_engine(EngineCache(tmp_path).engine_path(key), key, b"plan", model_onnx)
    with pytest.raises(BackendError, match=unavailable):
        load_backend(_model(tmp_path, model_onnx))
    backend = load_backend(_model(tmp_path, model_onnx, fallback_to_onnxruntime=True))
    try:
        assert backend.name.startswith("onnxruntime")
    finally:
        backend.close()


def test_cuda_error_while_loading_is_a_backend_error(tmp_path: Path, fake_cuda: FakeDriver) -> None:
    fake_cuda.push_error = "cuCtxPushCurrent failed: an illegal memory access was encountered"
    engine = tmp_path / "x.engine"
    with pytest.raises(BackendError, match=f"CUDA failed while loading {engine}: cuCtxPush"):
        TensorRTBackend(
            engine, sys.modules["tensorrt"], names=None, input_hw=(640, 640), max_batch=4
        )
    assert fake_cuda.retained == 0
