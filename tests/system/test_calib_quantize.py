"""The two Q/DQ recipes ``calibrate`` writes, checked on real quantized yolov8n models."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from calib.images import list_calibration_images
from calib.quantize import QuantizeOptions, quantize
from engines.qdq import non_8bit_dequantize_inputs, summarize
from tests.fixtures.data import REPO

# Convs of yolov8n outside the Detect head's decode (its DFL conv stays float).
QUANTIZED_CONVS = 63


@pytest.fixture(scope="module")
def recipes(
    model_onnx: Path, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, onnx.ModelProto]:
    """Each recipe's model from the same 4 calibration images (minmax: cheap; the placement
    and weight range do not depend on the calibration method)."""
    root = tmp_path_factory.mktemp("recipes")
    images = root / "images"
    images.mkdir()
    for p in sorted((shared_dir / "datasets" / "coco_calib" / "images").glob("*.jpg"))[:4]:
        shutil.copy(p, images / p.name)
    models = {}
    for recipe in ("ort-cpu", "tensorrt"):
        out = root / f"{recipe}.onnx"
        options = QuantizeOptions(method="minmax", recipe=recipe)
        quantize(model_onnx, list_calibration_images(images), out, options, "test")
        models[recipe] = onnx.load(str(out))
    return models


def _weights(model: onnx.ModelProto) -> list[np.ndarray]:
    """The quantized conv weights (int8 initializers of rank 4)."""
    return [
        numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.data_type == TensorProto.INT8 and len(t.dims) == 4
    ]


def _consumers(model: onnx.ModelProto, op_type: str) -> set[str]:
    """Op types that read an output of an ``op_type`` node."""
    outputs = {o for n in model.graph.node if n.op_type == op_type for o in n.output}
    return {n.op_type for n in model.graph.node if outputs.intersection(n.input)}


@pytest.mark.parametrize("recipe", ["ort-cpu", "tensorrt"])
def test_every_dequantize_input_is_8bit(recipes: dict[str, onnx.ModelProto], recipe: str) -> None:
    model = recipes[recipe]
    assert non_8bit_dequantize_inputs(model) == []
    assert summarize(model).tensorrt_compatible


def _activation_readers(model: onnx.ModelProto) -> list[set[str]]:
    """For each activation Q/DQ pair (a DequantizeLinear fed by a QuantizeLinear), the op
    types reading its output."""
    q_outputs = {o for n in model.graph.node if n.op_type == "QuantizeLinear" for o in n.output}
    pairs = [
        n.output[0]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in q_outputs
    ]
    return [{n.op_type for n in model.graph.node if out in n.input} for out in pairs]


def test_tensorrt_recipe_quantizes_conv_inputs_only(
    recipes: dict[str, onnx.ModelProto],
) -> None:
    model = recipes["tensorrt"]
    assert summarize(model).quantized_op_types["Conv"] == QUANTIZED_CONVS
    # Each activation Q/DQ pair exists for a Conv input (a residual Add or Concat reading
    # the same tensor shares it); Conv outputs stay float, so TensorRT can fuse Conv + SiLU.
    readers = _activation_readers(model)
    assert readers
    assert all("Conv" in ops for ops in readers), readers
    assert "QuantizeLinear" not in _consumers(model, "Conv")
    weights = _weights(model)
    assert len(weights) == QUANTIZED_CONVS
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights) == 127


def test_ort_cpu_recipe_quantizes_silu_with_7bit_weights(
    recipes: dict[str, onnx.ModelProto],
) -> None:
    model = recipes["ort-cpu"]
    ops = summarize(model).quantized_op_types
    assert ops["Conv"] == QUANTIZED_CONVS
    assert ops["Sigmoid"] > 50
    assert ops["Mul"] > 50
    assert "QuantizeLinear" in _consumers(model, "Conv")
    # reduce_range: weights within 7 bits, so u8 x s8 pairs cannot saturate ORT's
    # 16-bit intermediate sums on x86 without VNNI.
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in _weights(model)) <= 64


def _calibrate_in_child(model: Path, images: Path, out: Path, cpus: set[int]) -> None:
    """``edgewatch calibrate`` (entropy, the default) in a process bound to ``cpus``."""
    subprocess.run(
        [sys.executable, "-m", "daemon", "calibrate", "--model", str(model),
         "--images", str(images), "--out", str(out)],
        check=True, capture_output=True, cwd=REPO,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )  # fmt: skip


def test_calibration_is_deterministic_across_runs_and_cores(
    model_onnx: Path, shared_dir: Path, tmp_path: Path
) -> None:
    """The documented numbers depend on this: same images, same bytes, however many cores
    ORT's calibration session gets (16 images: two batches, so histograms are merged)."""
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((shared_dir / "datasets" / "coco_calib" / "images").glob("*.jpg"))[:16]:
        shutil.copy(p, images / p.name)
    cpus = os.sched_getaffinity(0)
    outs = [tmp_path / "all.onnx", tmp_path / "one.onnx"]
    _calibrate_in_child(model_onnx, images, outs[0], cpus)
    _calibrate_in_child(model_onnx, images, outs[1], {min(cpus)})
    assert outs[0].read_bytes() == outs[1].read_bytes()
