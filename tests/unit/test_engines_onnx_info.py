"""Reading the real YOLOv8n ONNX: layout, traits, profile shapes (no TensorRT needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.export import add_uint8_input, to_fp16
from engines.onnx_info import (
    InputLayout,
    InputSpec,
    ModelFileError,
    file_sha256,
    info_from_model,
    profile_shapes,
    read_onnx_info,
)
from engines.plan import BatchProfile


def test_fp16_model_keeps_float32_resize_scales_and_is_fp16(model_onnx: Path) -> None:
    """ONNX Runtime's converter (like ModelOpt AutoCast) keeps small float32 initializers."""
    half = to_fp16(onnx.load(str(model_onnx)))
    kept = [i.name for i in half.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert kept
    assert info_from_model(half, model_onnx, "x" * 64).traits.is_fp16


def test_plain_export_is_float_nchw(model_onnx: Path) -> None:
    info = read_onnx_info(model_onnx)
    assert info.input.layout is InputLayout.FLOAT_NCHW
    assert info.input.name == "images"
    assert info.input.dims == (None, 3, None, None)
    assert not info.traits.has_qdq
    assert not info.traits.is_fp16
    assert info.sha256 == file_sha256(model_onnx)
    assert len(info.sha256) == 64


def test_uint8_wrapped_model_is_nhwc_and_profiles_fill_dynamic_axes(model_onnx: Path) -> None:
    wrapped = add_uint8_input(onnx.load(str(model_onnx)))
    info = info_from_model(wrapped, model_onnx, "x" * 64)
    assert info.input.layout is InputLayout.UINT8_NHWC
    shapes = profile_shapes(info.input, BatchProfile(1, 4, 8), (640, 640))
    assert shapes == ((1, 640, 640, 3), (4, 640, 640, 3), (8, 640, 640, 3))


def test_profile_shapes_nchw_and_fixed_axes() -> None:
    spec = InputSpec("images", InputLayout.FLOAT_NCHW, (None, 3, 640, 640))
    assert profile_shapes(spec, BatchProfile(1, 2, 2), (640, 640))[2] == (2, 3, 640, 640)
    with pytest.raises(ModelFileError, match="fixed to 640"):
        profile_shapes(spec, BatchProfile(1, 2, 2), (480, 480))
    fixed_batch = InputSpec("images", InputLayout.FLOAT_NCHW, (1, 3, 640, 640))
    with pytest.raises(ModelFileError, match="fixed batch of 1"):
        profile_shapes(fixed_batch, BatchProfile(1, 8, 8), (640, 640))
    assert profile_shapes(fixed_batch, BatchProfile(1, 1, 1), (640, 640))[0] == (1, 3, 640, 640)


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        read_onnx_info(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01not a model")
    with pytest.raises(ModelFileError, match="not a readable ONNX"):
        read_onnx_info(junk)


def _qdq_model(zero_point: npt.NDArray[np.generic]) -> onnx.ModelProto:
    """A fake-quantized input: Q then DQ with ``zero_point`` (its dtype is the Q type)."""
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["images", "scale", "zp"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["output0"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [None, 3, 64, 64])],
        [
            numpy_helper.from_array(np.asarray(0.02, np.float32), "scale"),
            numpy_helper.from_array(zero_point, "zp"),
        ],
    )
    return helper.make_model(graph)


def test_qdq_graph_is_flagged() -> None:
    """A fake-quantized input (Q then DQ) is enough to make the build plan treat it as INT8."""
    model = _qdq_model(np.asarray(0, np.int8))
    info = info_from_model(model, Path("qdq.onnx"), "x" * 64)
    assert info.traits.has_qdq
    assert not info.traits.qdq_asymmetric
    assert info.input.layout is InputLayout.FLOAT_NCHW


@pytest.mark.parametrize("zero_point", [np.asarray(128, np.uint8), np.asarray(3, np.int8)])
def test_asymmetric_qdq_is_flagged(zero_point: npt.NDArray[np.generic]) -> None:
    info = info_from_model(_qdq_model(zero_point), Path("qdq.onnx"), "x" * 64)
    assert info.traits.has_qdq
    assert info.traits.qdq_asymmetric
