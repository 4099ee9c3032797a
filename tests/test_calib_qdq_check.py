"""``non_8bit_dequantize_inputs``: the static form of TensorRT's parser rule that a
DequantizeLinear input must be 8-bit (int32 biases, int16 activations are rejected)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from daemon.infer.qdq import non_8bit_dequantize_inputs


def _conv_model(bias: str, activation: int) -> onnx.ModelProto:
    """x -> Q/DQ (``activation`` type) -> Conv(DQ int8 weight, ``bias``) -> y, opset 21.

    ``bias`` is "float" (an initializer) or "int32" (an int32 initializer behind a
    DequantizeLinear, what ORT's default QuantizeBias writes)."""
    zero_type = helper.tensor_dtype_to_np_dtype(activation)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.zeros((), zero_type), "x_zero"),
        numpy_helper.from_array(np.ones((2, 1, 1, 1), np.int8), "w_q"),
        numpy_helper.from_array(np.full(2, 0.1, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(2, np.int8), "w_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"], "x_Q"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], "x_DQ"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], "w_DQ", axis=0),
    ]
    if bias == "int32":
        inits += [
            numpy_helper.from_array(np.array([5, -5], np.int32), "b_q"),
            numpy_helper.from_array(np.full(2, 0.002, np.float32), "b_scale"),
            numpy_helper.from_array(np.zeros(2, np.int32), "b_zero"),
        ]
        nodes.append(
            helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b"], "b_DQ")
        )
    else:
        inits.append(numpy_helper.from_array(np.array([0.01, -0.01], np.float32), "b"))
    nodes.append(helper.make_node("Conv", ["x_dq", "w", "b"], ["y"], "conv"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_float_bias_with_8bit_activations_passes() -> None:
    assert non_8bit_dequantize_inputs(_conv_model("float", TensorProto.INT8)) == []
    assert non_8bit_dequantize_inputs(_conv_model("float", TensorProto.UINT8)) == []


def test_int32_bias_dequantize_is_reported() -> None:
    assert non_8bit_dequantize_inputs(_conv_model("int32", TensorProto.INT8)) == ["b_DQ"]


def test_16bit_activation_dequantize_is_reported() -> None:
    """The activation's type comes from its QuantizeLinear (zero point), found by inference."""
    assert non_8bit_dequantize_inputs(_conv_model("float", TensorProto.INT16)) == ["x_DQ"]


def test_model_without_qdq_has_nothing_to_report(model_onnx: Path) -> None:
    assert non_8bit_dequantize_inputs(onnx.load(str(model_onnx))) == []
