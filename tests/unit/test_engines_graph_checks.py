"""The static checks every graph passes before a TensorRT build (no TensorRT needed): each
rule on a graph that breaks it, and the graphs edgewatch prepares, which break none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.builder import EngineBuildError, prepare_model
from engines.export import add_uint8_input, pin_input_hw
from engines.graph_checks import (
    dequantize_problems,
    fixed_hw_problems,
    opset_problems,
    quantize_node_problems,
    resize_problems,
    tensorrt_problems,
    uint8_input_problems,
)
from engines.onnx_info import read_onnx_info
from engines.plan import BuildPlan, Int8Source
from engines.qdq import non_8bit_dequantize_inputs


def _graph(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], opset: int = 18,
           input_type: int = TensorProto.FLOAT) -> onnx.ModelProto:  # fmt: skip
    image = helper.make_tensor_value_info("x", input_type, ["N", 8, 8, 3])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [image], [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_uint8_input_must_feed_a_cast_only() -> None:
    transpose_first = _graph(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2], name="t"),
            helper.make_node("Cast", ["t"], ["y"], to=TensorProto.FLOAT, name="c"),
        ],
        [],
        input_type=TensorProto.UINT8,
    )
    assert uint8_input_problems(transpose_first) == [
        "uint8 input 'x' feeds Transpose node 't'; TensorRT takes a uint8 input only into a Cast"
    ]


def test_wrapped_and_pinned_model_passes_every_check(model_onnx: Path) -> None:
    model = onnx.load(str(model_onnx))
    wrapped = add_uint8_input(model)
    assert uint8_input_problems(wrapped) == []
    assert fixed_hw_problems(wrapped) == [
        "image input 'images' has dynamic axes [1, 2] besides the batch"
    ]
    pinned = pin_input_hw(wrapped, (384, 640))
    dims = [d.dim_value for d in pinned.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [384, 640, 3]
    assert tensorrt_problems(pinned) == []


def _bias_dq(dtype: type[np.integer]) -> onnx.ModelProto:
    bias = numpy_helper.from_array(np.arange(3, dtype=dtype), "bias_q")
    scale = numpy_helper.from_array(np.full(3, 0.1, np.float32), "bias_scale")
    node = helper.make_node("DequantizeLinear", ["bias_q", "bias_scale"], ["y"], name="bias_dq")
    return _graph([node], [bias, scale])


def test_dequantize_of_int32_bias_is_refused() -> None:
    assert non_8bit_dequantize_inputs(_bias_dq(np.int32)) == ["bias_dq"]
    assert (
        "1 DequantizeLinear node(s) take a non-8-bit input (bias_dq)"
        in dequantize_problems(_bias_dq(np.int32))[0]
    )
    assert non_8bit_dequantize_inputs(_bias_dq(np.int8)) == []
    assert dequantize_problems(_bias_dq(np.int8)) == []


def test_opset_above_tensorrt_10_3_is_refused() -> None:
    assert opset_problems(_graph([], [], opset=20)) == []
    (problem,) = opset_problems(_graph([], [], opset=21))
    assert "opset 21 is above 20" in problem


def test_blocked_quantization_is_refused() -> None:
    node = helper.make_node("DequantizeLinear", ["a", "s"], ["y"], name="dq", block_size=32)
    assert quantize_node_problems(_graph([node], [])) == [
        "DequantizeLinear node 'dq' uses blocked quantization (block_size), which TensorRT "
        "10.3 does not support"
    ]


@pytest.mark.parametrize(
    ("attrs", "ok"),
    [
        ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric"}, True),
        ({"mode": "cubic"}, False),
        ({"coordinate_transformation_mode": "tf_crop_and_resize"}, False),
    ],
)
def test_resize_modes(attrs: dict[str, str], ok: bool) -> None:
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], name="r", **attrs)
    assert (resize_problems(_graph([node], [])) == []) is ok


def test_prepare_model_refuses_with_every_problem_named(tmp_path: Path) -> None:
    model = _bias_dq(np.int32)
    model.opset_import[0].version = 21
    path = tmp_path / "bad.onnx"
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    # Float NCHW [N, 3, 8, W]: wrapped to uint8 NHWC and pinned; the Q/DQ and opset remain.
    onnx.save(model, str(path))
    plan = BuildPlan(True, False, False, Int8Source.QDQ)
    with pytest.raises(EngineBuildError) as refused:
        prepare_model(read_onnx_info(path), (8, 32), plan)
    text = str(refused.value)
    assert "opset 21" in text
    assert "non-8-bit input (bias_dq)" in text
