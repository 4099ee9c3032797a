"""The TensorRT backend's CUDA side on a real GPU: real PyCUDA (primary context, pinned
buffers, device allocations, streams, blocking-sync events, the release order at close),
with the engine itself played by ONNX Runtime on the host (``tests/fakes/tensorrt_runtime.py``)
because no TensorRT runs on the GPU machines here. Runs with ``pytest -m gpu`` where PyCUDA
and an NVIDIA GPU are present; skipped with the reason elsewhere."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend
from daemon.infer.tensorrt_backend import TensorRTBackend
from daemon.stills import read_image
from engines.builder import prepare_model
from engines.onnx_info import read_onnx_info
from engines.plan import BuildPlan, Int8Source
from engines.tensors import TensorSpec
from tests.fakes.tensorrt_runtime import Driver, make_tensorrt, write_engine_file

pytestmark = pytest.mark.gpu

HW = (320, 320)
MAX_BATCH = 2
PROFILE = ((1, *HW, 3), (MAX_BATCH, *HW, 3), (MAX_BATCH, *HW, 3))


class PyCudaMemory:
    """Real device memory through PyCUDA. A host-side "engine" cannot be enqueued on a CUDA
    stream, so its work runs at once, after the context's earlier work has finished."""

    def read(self, address: int, nbytes: int) -> bytes:
        import pycuda.driver as cuda

        buffer = np.empty(nbytes, np.uint8)
        cuda.memcpy_dtoh(buffer, address)
        return buffer.tobytes()

    def write(self, address: int, data: bytes) -> None:
        import pycuda.driver as cuda

        cuda.memcpy_htod(address, np.frombuffer(data, np.uint8).copy())

    def enqueue(self, stream_handle: int, work: Callable[[], None]) -> None:
        import pycuda.driver as cuda

        cuda.Context.synchronize()
        work()


@pytest.fixture(scope="module")
def gpu() -> None:
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        pytest.skip(f"PyCUDA is not installed ({exc})")
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            pytest.skip("no CUDA device")
    except cuda.Error as exc:
        pytest.skip(f"CUDA is not usable: {exc}")


@pytest.fixture
def engine(model_onnx: Path, tmp_path: Path) -> Path:
    graph = tmp_path / "prepared.onnx"
    plan = BuildPlan(True, False, False, Int8Source.NONE)
    onnx.save(prepare_model(read_onnx_info(model_onnx), HW, plan), str(graph))
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": np.zeros((1, *HW, 3), np.uint8)})
    io = [
        TensorSpec("images", True, (-1, *HW, 3), "UINT8"),
        TensorSpec("output0", False, (-1, *out.shape[1:]), "FLOAT"),
    ]
    path = tmp_path / "host.engine"
    write_engine_file(path, io, PROFILE, graph)
    return path


def test_backend_on_real_cuda(
    gpu: None, engine: Path, model_onnx: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2
    import pycuda.driver as cuda

    from daemon.infer.cuda import context_current, retain_context

    images = sorted((shared_dir / "datasets" / "coco_eval" / "images").glob("*.jpg"))[:MAX_BATCH]
    frames = np.asarray(
        [cv2.resize(cv2.cvtColor(read_image(p), cv2.COLOR_BGR2RGB), HW[::-1]) for p in images],
        dtype=np.uint8,
    )
    ort_backend = OnnxRuntimeBackend(model_onnx, max_batch=MAX_BATCH, input_size=HW[0])
    reference = ort_backend.infer(frames).copy()
    ort_backend.close()

    driver = Driver()
    trt = make_tensorrt(driver, PyCudaMemory())
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    probe = retain_context()
    with context_current(probe):
        free_before, _ = cuda.mem_get_info()
    backend = TensorRTBackend(engine, trt, names=None, input_hw=HW, max_batch=MAX_BATCH)
    results: list[np.ndarray | BaseException] = [np.empty(0), np.empty(0)]
    barrier = threading.Barrier(2)

    def worker(i: int) -> None:
        try:
            barrier.wait(30)
            for _ in range(5):
                out = backend.infer(frames[i : i + 1])
            results[i] = out.copy()
        except BaseException as exc:  # reported by the main thread
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    backend.close()
    with context_current(probe):
        free_after, _ = cuda.mem_get_info()
    probe.detach()
    for i, result in enumerate(results):
        assert isinstance(result, np.ndarray), result
        np.testing.assert_allclose(result[0], reference[i], rtol=1e-3, atol=1e-2)
    assert driver.leaks == []
    # Every device allocation and pinned buffer of the two slots was given back.
    assert free_after >= free_before - (4 << 20), (free_before, free_after)
