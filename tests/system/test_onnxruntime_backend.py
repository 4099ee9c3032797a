"""OnnxRuntimeBackend on the real yolov8n.onnx and on tiny hand-built graphs (for the shapes
a real export never has), plus the uint8-input rewrite and the backend factory."""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from daemon.batch.letterbox import letterbox_into
from daemon.cli import main
from daemon.config.model import BackendKind, ModelConfig
from daemon.infer.backend import Backend, BackendError, parse_class_names
from daemon.infer.factory import load_backend
from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend
from daemon.stills import read_image
from engines.export import ExportError, add_uint8_input
from tests.fixtures.data import COCO_EVAL, MODEL_PT


def _tiny_model(
    path: Path,
    in_shape: list[int | str],
    out_shape: list[int],
    names: str | None = None,
    elem: int = TensorProto.FLOAT,
) -> Path:
    """``Reshape(x * 1)`` from ``in_shape`` to ``out_shape`` (-1 for the batch axis)."""
    declared_out: list[int | str] = [in_shape[0], *out_shape[1:]]
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["images", "one"], ["scaled"]),
            helper.make_node("Reshape", ["scaled", "shape"], ["output0"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", elem, in_shape)],
        [helper.make_tensor_value_info("output0", elem, declared_out)],
        initializer=[
            numpy_helper.from_array(np.array(1, dtype=np.float32), "one"),
            numpy_helper.from_array(np.array(out_shape, dtype=np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if names is not None:
        model.metadata_props.add(key="names", value=names)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def letterboxed() -> npt.NDArray[np.uint8]:
    """Eight real coco_eval images letterboxed to 640 (one batch buffer)."""
    paths = sorted((COCO_EVAL / "images").glob("*.jpg"))[:8]
    batch = np.empty((8, 640, 640, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        letterbox_into(read_image(p), batch[i])
    return batch


@pytest.fixture(scope="module")
def yolo(model_onnx: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(model_onnx, max_batch=8, intra_op_threads=2)


def test_real_model_properties(yolo: OnnxRuntimeBackend) -> None:
    assert isinstance(yolo, Backend)
    assert yolo.name == "onnxruntime:CPUExecutionProvider"
    assert yolo.input_hw == (640, 640)
    assert yolo.max_batch == 8
    assert yolo.max_inflight == 1
    assert yolo.dynamic_hw
    assert not yolo.uint8_input
    assert len(yolo.class_names) == 80
    assert yolo.class_names[0] == "person"
    assert yolo.class_names[79] == "toothbrush"


def test_dynamic_batch_gives_identical_per_image_outputs(
    yolo: OnnxRuntimeBackend, letterboxed: npt.NDArray[np.uint8]
) -> None:
    singles = [yolo.infer(letterboxed[i : i + 1]).copy() for i in range(8)]
    assert singles[0].shape == (1, 84, 8400)
    assert singles[0].dtype == np.float32
    for n in (2, 5, 8):
        out = yolo.infer(letterboxed[:n])
        assert out.shape == (n, 84, 8400)
        for i in range(n):
            # Batched convolutions may pick other kernels: float noise only.
            np.testing.assert_allclose(out[i], singles[i][0], atol=2e-3, rtol=1e-4)


def test_split_sessions_give_the_same_outputs(
    model_onnx: Path, yolo: OnnxRuntimeBackend, letterboxed: npt.NDArray[np.uint8]
) -> None:
    split = OnnxRuntimeBackend(model_onnx, max_batch=8, intra_op_threads=2, split_sessions=2)
    try:
        assert split.split_sessions == 2
        rect = np.ascontiguousarray(letterboxed[:, 128:512])  # a 384x640 batch
        # Two slices at once (3 images: 1 and 2); one image runs in the two-thread session.
        for images in (letterboxed[:1], letterboxed[:3], letterboxed[:4], letterboxed, rect[:4]):
            expected = yolo.infer(images).copy()
            np.testing.assert_allclose(split.infer(images), expected, atol=2e-3, rtol=1e-4)
    finally:
        split.close()
    with pytest.raises(BackendError, match="after close"):
        split.infer(letterboxed[:2])


def test_a_batch_that_does_not_divide_evenly_runs_on_the_split_sessions(
    model_onnx: Path, letterboxed: npt.NDArray[np.uint8]
) -> None:
    # Three cameras on two cores: in the one two-thread session they ran at half the rate
    # of four under CPU contention. The split sessions run on the pool's threads, which
    # exist only once a batch was handed to them.
    split = OnnxRuntimeBackend(model_onnx, max_batch=4, intra_op_threads=2, split_sessions=2)
    before = set(threading.enumerate())

    def pool_threads() -> list[threading.Thread]:
        new = set(threading.enumerate()) - before
        return [t for t in new if t.name.startswith("ort-split")]

    try:
        split.infer(letterboxed[:1])
        assert not pool_threads()
        split.infer(letterboxed[:3])
        assert pool_threads()
    finally:
        split.close()


def test_split_sessions_default_to_the_cores_and_max_batch(model_onnx: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    auto = load_backend(ModelConfig(path=model_onnx, max_batch=8))
    single = load_backend(ModelConfig(path=model_onnx, max_batch=1))
    try:
        assert isinstance(auto, OnnxRuntimeBackend)
        assert isinstance(single, OnnxRuntimeBackend)
        assert auto.split_sessions == min(cores, 8)
        assert single.split_sessions == 1
    finally:
        auto.close()
        single.close()


def test_rejects_wrong_batches(yolo: OnnxRuntimeBackend) -> None:
    with pytest.raises(ValueError, match="batch must be"):
        yolo.infer(np.zeros((9, 640, 640, 3), np.uint8))
    with pytest.raises(ValueError, match="batch must be"):
        yolo.infer(np.zeros((1, 640, 640, 3), np.float32))
    with pytest.raises(ValueError, match="batch must be"):
        yolo.infer(np.zeros((1, 700, 640, 3), np.uint8))


def test_uint8_wrapped_model_is_equivalent(
    model_onnx: Path,
    tmp_path: Path,
    yolo: OnnxRuntimeBackend,
    letterboxed: npt.NDArray[np.uint8],
) -> None:
    wrapped_path = tmp_path / "u8.onnx"
    rc = main(["export", "--weights", str(model_onnx), "--uint8-input", "--out", str(wrapped_path)])
    assert rc == 0
    wrapped = OnnxRuntimeBackend(wrapped_path, max_batch=2)
    try:
        assert wrapped.uint8_input
        assert wrapped.class_names == yolo.class_names
        expected = yolo.infer(letterboxed[:2]).copy()
        got = wrapped.infer(letterboxed[:2])
        assert float(np.abs(got - expected).max()) < 1e-3
    finally:
        wrapped.close()
    meta = {p.key: p.value for p in onnx.load(str(wrapped_path)).metadata_props}
    assert meta["edgewatch_input"] == "uint8-nhwc"
    assert "names" in meta


def test_uint8_wrap_rejects_uint8_and_non_images(tmp_path: Path) -> None:
    tiny = _tiny_model(tmp_path / "t.onnx", ["batch", 3, 8, 8], [-1, 12, 16])
    model = add_uint8_input(onnx.load(str(tiny)))
    with pytest.raises(ExportError, match="already uint8"):
        add_uint8_input(model)
    flat = _tiny_model(tmp_path / "f.onnx", ["batch", 192], [-1, 12, 16])
    with pytest.raises(ExportError, match="not float"):
        add_uint8_input(onnx.load(str(flat)))


def test_tiny_dynamic_model_names_fallback_and_fixed_size(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "t.onnx", ["batch", 3, 8, 8], [-1, 12, 16], names="{0: 'a'}")
    backend = OnnxRuntimeBackend(path, input_size=640, max_batch=4)
    # Fixed H/W in the graph win over the configured size; missing names become class_<i>.
    assert backend.input_hw == (8, 8)
    assert backend.class_names == ("a", *(f"class_{i}" for i in range(1, 8)))
    batch = np.arange(3 * 8 * 8 * 3, dtype=np.uint8).reshape(3, 8, 8, 3)
    out = backend.infer(batch)
    expected = (batch.transpose(0, 3, 1, 2).astype(np.float32) / 255).reshape(3, 12, 16)
    np.testing.assert_array_equal(out, expected)


def test_fixed_batch_one_is_looped(tmp_path: Path) -> None:
    dynamic = OnnxRuntimeBackend(_tiny_model(tmp_path / "d.onnx", ["b", 3, 8, 8], [-1, 12, 16]))
    fixed = OnnxRuntimeBackend(_tiny_model(tmp_path / "f.onnx", [1, 3, 8, 8], [1, 12, 16]))
    batch = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fixed.infer(batch), dynamic.infer(batch))
    # Each split session loops over its own slice.
    split = OnnxRuntimeBackend(tmp_path / "f.onnx", split_sessions=3)
    assert split.split_sessions == 3
    for n in (6, 5):
        np.testing.assert_array_equal(split.infer(batch[:n]), dynamic.infer(batch[:n]))


def test_fixed_batch_above_one_is_rejected(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "f.onnx", [4, 3, 8, 8], [4, 12, 16])
    with pytest.raises(BackendError, match="fixed batch of 4"):
        OnnxRuntimeBackend(path)


@pytest.mark.parametrize(
    ("in_shape", "out_shape", "message"),
    [
        (["b", 192], [-1, 12, 16], "rank 2"),
        (["b", 3, 64], [-1, 12, 16], "rank 3"),
        (["b", 8, 8, 3], [-1, 12, 16], "expected float"),
        (["b", 3, 8, 8], [-1, 16, 12], "transposed"),
        (["b", 3, 8, 8], [-1, 4, 48], r"4 \+ classes"),
        (["b", 3, 8, 8], [-1, 192], r"4 \+ classes"),
    ],
)
def test_non_yolov8_models_are_rejected(
    tmp_path: Path, in_shape: list[int | str], out_shape: list[int], message: str
) -> None:
    path = _tiny_model(tmp_path / "bad.onnx", in_shape, out_shape)
    with pytest.raises(BackendError, match=message):
        OnnxRuntimeBackend(path)


def test_missing_and_corrupt_files(tmp_path: Path, model_onnx: Path) -> None:
    with pytest.raises(BackendError, match="not found"):
        OnnxRuntimeBackend(tmp_path / "absent.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf" * 100)
    with pytest.raises(BackendError, match="not a loadable ONNX model"):
        OnnxRuntimeBackend(garbage)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model_onnx.read_bytes()[:100_000])
    with pytest.raises(BackendError, match="not a loadable ONNX model"):
        OnnxRuntimeBackend(truncated)


def test_providers(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "t.onnx", ["b", 3, 8, 8], [-1, 12, 16])
    with pytest.raises(BackendError, match="unknown onnxruntime execution provider"):
        OnnxRuntimeBackend(path, providers=("NoSuchExecutionProvider",))
    # A known provider this build lacks is skipped; the backend says what really runs.
    backend = OnnxRuntimeBackend(
        path, providers=("TensorrtExecutionProvider", "CUDAExecutionProvider")
    )
    assert backend.name.startswith("onnxruntime:")


def test_close_then_infer_fails(tmp_path: Path) -> None:
    backend = OnnxRuntimeBackend(_tiny_model(tmp_path / "t.onnx", ["b", 3, 8, 8], [-1, 12, 16]))
    backend.close()
    with pytest.raises(BackendError, match="after close"):
        backend.infer(np.zeros((1, 8, 8, 3), np.uint8))


def test_factory_loads_onnxruntime(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "t.onnx", ["b", 3, 8, 8], [-1, 12, 16])
    backend = load_backend(ModelConfig(path=path, max_batch=2))
    assert isinstance(backend, OnnxRuntimeBackend)
    assert backend.max_batch == 2


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_factory_backend_without_its_runtime_is_a_backend_error(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "t.onnx", ["b", 3, 8, 8], [-1, 12, 16])
    with pytest.raises(BackendError, match=r"needs the Python package 'torch'.*edgewatch\[torch\]"):
        load_backend(ModelConfig(path=path, backend=BackendKind.TORCH))


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is not None, reason="has ultralytics")
def test_export_without_the_extra_prints_the_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["export", "--weights", str(MODEL_PT), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1
    assert "pip install 'edgewatch[export]'" in err[0]


@pytest.mark.parametrize("weights", ["absent.pt", "absent.onnx"])
def test_export_bad_weights_exit_2(
    weights: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["export", "--weights", str(tmp_path / weights), "--uint8-input"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1
    assert "not found" in err[0]


@pytest.mark.ultralytics
def test_export_real_weights(
    tmp_path: Path, yolo: OnnxRuntimeBackend, letterboxed: npt.NDArray[np.uint8]
) -> None:
    out = tmp_path / "yolov8n.onnx"
    assert main(["export", "--weights", str(MODEL_PT), "--out", str(out)]) == 0
    exported = OnnxRuntimeBackend(out, max_batch=4)
    try:
        assert exported.dynamic_hw
        assert exported.class_names == yolo.class_names
        got = exported.infer(letterboxed[:4])
        np.testing.assert_allclose(got, yolo.infer(letterboxed[:4]), atol=1e-2)
    finally:
        exported.close()


def test_class_names_from_every_metadata_form() -> None:
    assert parse_class_names("{0: 'person', 1: 'car'}", 2) == ("person", "car")
    assert parse_class_names("['person', 'car']", 2) == ("person", "car")
    # Ids the metadata lacks (or a count that disagrees) keep the names it has.
    assert parse_class_names("{0: 'person'}", 3) == ("person", "class_1", "class_2")
    assert parse_class_names("not a literal (", 2) == ("class_0", "class_1")
    assert parse_class_names("{0: 'a', 1: 'b'}", None) == ("a", "b")
    with pytest.raises(BackendError, match="cannot tell the number of classes"):
        parse_class_names(None, None)
