"""``engines.qdq`` on small real Q/DQ graphs: ``non_8bit_dequantize_inputs`` (the
static form of TensorRT's parser rule that a DequantizeLinear input must be 8-bit) and the
ORT CPU form's int32 Conv biases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engines.qdq import int8_activations_to_uint8, non_8bit_dequantize_inputs

BIAS = np.array([0.01, -0.01], np.float32)


def _conv_model(bias: str, activation: int, *, requantized_output: bool = False) -> onnx.ModelProto:
    """x -> Q/DQ (``activation`` type) -> Conv(DQ int8 weight, ``bias``) -> y, opset 21;
    with ``requantized_output`` the Conv output goes through Q/DQ too (ORT fuses that).

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
        inits.append(numpy_helper.from_array(BIAS, "b"))
    conv_out = "conv_out" if requantized_output else "y"
    nodes.append(helper.make_node("Conv", ["x_dq", "w", "b"], [conv_out], "conv"))
    if requantized_output:
        nodes += [
            helper.make_node("QuantizeLinear", [conv_out, "x_scale", "x_zero"], ["y_q"], "y_Q"),
            helper.make_node("DequantizeLinear", ["y_q", "x_scale", "x_zero"], ["y"], "y_DQ"),
        ]
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


def _bias_input(model: onnx.ModelProto) -> tuple[str, int]:
    """The Conv's bias tensor name and the element type of the tensor behind it."""
    (conv,) = [n for n in model.graph.node if n.op_type == "Conv"]
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    source = producers[conv.input[2]].input[0] if conv.input[2] in producers else conv.input[2]
    return source, inits[source].data_type


def test_ort_form_gives_fused_convs_the_int32_bias_ort_quantizes() -> None:
    """ORT's QuantizeBias: round(bias / (input scale x weight scale)) as int32, zero point 0."""
    ort_form = int8_activations_to_uint8(
        _conv_model("float", TensorProto.INT8, requantized_output=True)
    )
    onnx.checker.check_model(ort_form, full_check=True)
    name, dtype = _bias_input(ort_form)
    assert dtype == TensorProto.INT32
    values = {t.name: numpy_helper.to_array(t) for t in ort_form.graph.initializer}
    np.testing.assert_array_equal(values[name], np.round(BIAS / (0.02 * 0.1)).astype(np.int32))
    assert "b" not in values  # the float original is gone


def test_ort_form_keeps_float_bias_of_a_conv_ort_cannot_fuse() -> None:
    """Without a quantized output ORT runs the Conv in float: the bias stays exact."""
    ort_form = int8_activations_to_uint8(_conv_model("float", TensorProto.INT8))
    assert _bias_input(ort_form) == ("b", TensorProto.FLOAT)
