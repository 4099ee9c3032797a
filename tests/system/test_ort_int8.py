"""The daemon's ONNX Runtime backend runs an int8-activation Q/DQ model (the TensorRT-style
file ``calibrate`` writes) in ORT's fused integer kernels on the CPU provider, and its
detections agree with FP32."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.images import list_calibration_images
from calib.quantize import QuantizeOptions, quantize
from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend
from daemon.postprocess.match import Agreement, match
from daemon.stills import detect_images, list_images
from engines.qdq import summarize

EVAL_IMAGES = 16
# Loose on purpose: 8 calibration images with min/max ranges make a coarse INT8 model;
# a broken re-encoding shows up as an F1 near 0 (measured here: 0.82 on 16 images).
MIN_F1 = 0.7


def _quantized(model_onnx: Path, shared_dir: Path, root: Path, recipe: str) -> Path:
    """A real calibrated Q/DQ model (int8 symmetric activations), cheaply: 8 images, minmax."""
    images = sorted((shared_dir / "datasets" / "coco_calib" / "images").glob("*.jpg"))[:8]
    for p in images:
        shutil.copy(p, root / p.name)
    out = root / "yolov8n.int8.onnx"
    options = QuantizeOptions(method="minmax", recipe=recipe)
    quantize(model_onnx, list_calibration_images(root), out, options, "test")
    return out


@pytest.fixture(scope="module")
def int8_model(
    model_onnx: Path, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The ort-cpu recipe, the one whose Q/DQ placement ORT fuses into integer kernels."""
    out = _quantized(model_onnx, shared_dir, tmp_path_factory.mktemp("int8"), "ort-cpu")
    assert summarize(onnx.load(str(out))).int8_activations > 100
    return out


@pytest.fixture(scope="module")
def tensorrt_recipe_model(
    model_onnx: Path, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return _quantized(model_onnx, shared_dir, tmp_path_factory.mktemp("trt"), "tensorrt")


def _op_counts(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_int8_model_runs_fused_on_cpu(
    int8_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    optimized = tmp_path / "optimized.onnx"
    with caplog.at_level(logging.INFO, logger="daemon.infer.onnxruntime_backend"):
        backend = OnnxRuntimeBackend(int8_model, max_batch=1, optimized_model_out=optimized)
    backend.close()
    assert any("re-encoded" in r.getMessage() for r in caplog.records)
    ops = _op_counts(optimized)
    # The int8 file as it is fuses only a handful of convs (measured: 6 of 64).
    assert ops["QLinearConv"] >= 60, ops
    assert ops["Conv"] + ops["FusedConv"] <= 4, ops


def _tiny_qdq_model(path: Path) -> Path:
    """A Q/DQ Conv in ``calibrate``'s form (int8 symmetric activations, int8 per-channel
    weights, float bias) shaped like a YOLOv8 head output, [N, 8, 64], for the backend."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(1 / 127, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"),
        numpy_helper.from_array(np.zeros((), np.int8), "zero"),
        numpy_helper.from_array(rng.integers(-63, 64, (8, 3, 3, 3), dtype=np.int8), "w_q"),
        numpy_helper.from_array(np.full(8, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(8, np.int8), "w_zero"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([0, 8, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0),
        helper.make_node("Conv", ["x_dq", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "y_scale", "zero"], ["c_q"]),
        helper.make_node("DequantizeLinear", ["c_q", "y_scale", "zero"], ["c_dq"]),
        helper.make_node("Reshape", ["c_dq", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 64])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("fuse_qdq", "conv_ops"),
    [(True, {"QLinearConv"}), (False, {"Conv", "QuantizeLinear", "DequantizeLinear"})],
)
def test_fake_quantization_keeps_qdq_out_of_integer_kernels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fuse_qdq: bool, conv_ops: set[str]
) -> None:
    """``fuse_qdq=False`` runs the file as written (float Conv between Q/DQ pairs, no
    re-encoding), so its result does not depend on which integer kernels the CPU has."""
    model = _tiny_qdq_model(tmp_path / "tiny.onnx")
    optimized = tmp_path / "optimized.onnx"
    with caplog.at_level(logging.INFO, logger="daemon.infer.onnxruntime_backend"):
        backend = OnnxRuntimeBackend(
            model, max_batch=1, input_size=8, optimized_model_out=optimized, fuse_qdq=fuse_qdq
        )
    out = backend.infer(np.full((1, 8, 8, 3), 200, np.uint8))
    backend.close()
    ops = set(_op_counts(optimized))
    assert conv_ops <= ops, ops
    assert ("QLinearConv" in ops) == fuse_qdq, ops
    assert any("re-encoded" in r.getMessage() for r in caplog.records) == fuse_qdq
    assert out.shape == (1, 8, 64)


def test_fp32_model_is_loaded_unchanged(model_onnx: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="daemon.infer.onnxruntime_backend"):
        OnnxRuntimeBackend(model_onnx, max_batch=1).close()
    assert not any("re-encoded" in r.getMessage() for r in caplog.records)


def _agreement(reference: Path, candidate: Path, images: list[Path]) -> Agreement:
    """Detections of ``candidate`` against ``reference``, both through the daemon's backend."""
    found = {}
    for path in (reference, candidate):
        backend = OnnxRuntimeBackend(path, max_batch=4, intra_op_threads=2)
        try:
            found[path] = [
                d for _, d in detect_images(backend, images, 0.25, 0.7, 300, batch_size=4)
            ]
        finally:
            backend.close()
    total = Agreement()
    for ref, cand in zip(found[reference], found[candidate], strict=True):
        total = total + match(ref, cand)
    return total


@pytest.mark.parametrize("recipe", ["ort-cpu", "tensorrt"])
def test_int8_detections_agree_with_fp32(
    request: pytest.FixtureRequest, model_onnx: Path, shared_dir: Path, recipe: str
) -> None:
    """Both recipes run through the re-encoding (the TensorRT one with float Conv outputs,
    which ORT leaves unfused) and detect what FP32 does."""
    fixture = {"ort-cpu": "int8_model", "tensorrt": "tensorrt_recipe_model"}[recipe]
    int8 = request.getfixturevalue(fixture)
    images = list_images([shared_dir / "datasets" / "coco_eval" / "images"])[:EVAL_IMAGES]
    total = _agreement(model_onnx, int8, images)
    assert total.reference > 40  # the images are not trivially empty
    assert total.f1 >= MIN_F1, total
