"""Graph-level facts and rewrites of Q/DQ (explicitly quantized INT8) ONNX models.

The deployed INT8 model uses signed, symmetric (zero point 0) activations because that is
what TensorRT's explicit quantization accepts, and float biases because TensorRT's parser
rejects int32 ones. ONNX Runtime's x86 CPU provider fuses Q/DQ into integer kernels
(QLinearConv, ...) only for uint8 activations; the int8 model runs as float
fake-quantization. ``int8_activations_to_uint8`` gives ORT the same quantization grid in
uint8: q_u8 = q_s8 + 128 with zero point 128 dequantizes to exactly the same real values
(weights and scales are untouched), and gives each fusable Conv the int32 bias ORT's own
quantizer computes (QLinearConv adds its bias in int32 anyway). The ORT backend applies it
in memory when it loads such a model on the CPU provider.

``summarize`` says what a model quantizes and whether TensorRT's explicit INT8 accepts it
(the engine build refuses it otherwise); ``has_qdq`` is what the engine build plans by;
``non_8bit_dequantize_inputs`` finds what TensorRT's ONNX parser rejects outright (e.g. the
int32 bias DequantizeLinear of ORT's default recipe).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

_Q = "QuantizeLinear"
_DQ = "DequantizeLinear"
_ZP_INPUT = 2
_8BIT = frozenset({TensorProto.INT8, TensorProto.UINT8})


@dataclass(frozen=True)
class QdqSummary:
    """What a Q/DQ model quantizes: activation tensors by type and quantized nodes."""

    int8_activations: int
    uint8_activations: int
    nonzero_zero_points: int
    quantized_op_types: dict[str, int]

    @property
    def tensorrt_compatible(self) -> bool:
        """TensorRT explicit INT8: signed activations, every zero point 0."""
        return self.uint8_activations == 0 and self.nonzero_zero_points == 0


def _initializers(model: onnx.ModelProto) -> dict[str, TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def has_qdq(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is explicitly quantized: it has any QuantizeLinear/DequantizeLinear."""
    return any(node.op_type in (_Q, _DQ) for node in model.graph.node)


def non_8bit_dequantize_inputs(model: onnx.ModelProto) -> list[str]:
    """Names of the DequantizeLinear nodes whose quantized input is not int8/uint8 (or whose
    type cannot be determined): TensorRT's parser accepts only 8-bit (and FP8/FP4/INT4, which
    edgewatch never writes) there, so such a model fails to parse, e.g. with int32 biases."""
    types = _tensor_types(onnx.shape_inference.infer_shapes(model))
    return [
        node.name
        for node in model.graph.node
        if node.op_type == _DQ and types.get(node.input[0]) not in _8BIT
    ]


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor the graph declares, holds or infers."""
    types = {t.name: t.data_type for t in model.graph.initializer}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    return types


def summarize(model: onnx.ModelProto) -> QdqSummary:
    """Count activation Q nodes by type, non-zero zero points and ops fed by a DQ node."""
    inits = _initializers(model)
    s8 = u8 = nonzero = 0
    for node in model.graph.node:
        if node.op_type not in (_Q, _DQ) or len(node.input) <= _ZP_INPUT:
            continue
        zp = inits.get(node.input[_ZP_INPUT])
        if zp is None:
            continue
        values = numpy_helper.to_array(zp)
        if values.dtype != np.int32 and np.any(values != 0):
            nonzero += 1
        if node.op_type == _Q:
            s8 += values.dtype == np.int8
            u8 += values.dtype == np.uint8
    dq_outputs = {o for n in model.graph.node if n.op_type == _DQ for o in n.output}
    ops = Counter(
        n.op_type
        for n in model.graph.node
        if n.op_type not in (_Q, _DQ) and any(i in dq_outputs for i in n.input)
    )
    return QdqSummary(s8, u8, nonzero, dict(sorted(ops.items())))


def int8_activations_to_uint8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` with every int8 activation Q/DQ pair moved to uint8 (+128), and
    the float bias of each quantized Conv in the int32 form ORT's integer kernels take.

    Activations are the tensors a QuantizeLinear node produces; weights are stored already
    quantized (DequantizeLinear only) and keep their int8 type. The file keeps float biases
    because TensorRT rejects int32 ones; ORT's integer kernels given a float bias score
    lower than with the int32 bias ORT's own quantizer would have written (docs/int8.md).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _int32_conv_biases(out)
    inits = _initializers(out)
    activation_zps = {
        n.input[_ZP_INPUT]
        for n in out.graph.node
        if n.op_type == _Q
        and len(n.input) > _ZP_INPUT
        and n.input[_ZP_INPUT] in inits
        and inits[n.input[_ZP_INPUT]].data_type == TensorProto.INT8
    }
    renamed: dict[str, str] = {}
    for name in sorted(activation_zps):
        values = numpy_helper.to_array(inits[name]).astype(np.int16) + 128
        new_name = f"{name}_u8"
        out.graph.initializer.append(numpy_helper.from_array(values.astype(np.uint8), new_name))
        renamed[name] = new_name
    retyped: set[str] = set()
    for node in out.graph.node:
        if node.op_type in (_Q, _DQ) and len(node.input) > _ZP_INPUT:
            zp = node.input[_ZP_INPUT]
            if zp in renamed:
                node.input[_ZP_INPUT] = renamed[zp]
                if node.op_type == _Q:
                    retyped.update(node.output)
    # Recorded int8 shapes/types of the rewritten tensors would now be wrong; ORT re-infers them.
    stale = [vi for vi in out.graph.value_info if vi.name in retyped]
    for vi in stale:
        out.graph.value_info.remove(vi)
    # Initializers no node uses any more would only bloat the model.
    used = {i for n in out.graph.node for i in n.input}
    kept = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out


def _int32_conv_biases(model: onnx.ModelProto) -> None:
    """Replace, in place, the float bias of every Conv that ORT can fuse into an integer
    kernel (input and weight from DequantizeLinear, output into QuantizeLinear) by int32
    values behind a DequantizeLinear (scale = input scale x weight scale, zero point 0),
    computed as ORT's quantizer computes them. Other Convs run in float on dequantized
    values and keep their float bias, as does a bias outside the int32 range."""
    inits = _initializers(model)
    requantized = {n.input[0] for n in model.graph.node if n.op_type == _Q}
    dq_scale = {
        n.output[0]: numpy_helper.to_array(inits[n.input[1]])
        for n in model.graph.node
        if n.op_type == _DQ and n.input[1] in inits
    }
    added: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < _ZP_INPUT + 1:
            continue
        x, w, b = node.input[0], node.input[1], node.input[2]
        fusable = x in dq_scale and w in dq_scale and node.output[0] in requantized
        if not fusable or b not in inits:
            continue
        bias = numpy_helper.to_array(inits[b])
        scale = (dq_scale[x].astype(np.float32) * dq_scale[w].astype(np.float32)).reshape(-1)
        values = np.round(bias.astype(np.float64) / scale.astype(np.float64))
        limit = np.iinfo(np.int32)
        if bias.dtype != np.float32 or np.any(values < limit.min) or np.any(values > limit.max):
            continue
        name = f"{b}_int32"
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(values.astype(np.int32), name),
                numpy_helper.from_array(scale, f"{name}_scale"),
                numpy_helper.from_array(np.zeros(scale.shape, np.int32), f"{name}_zero_point"),
            ]
        )
        added.append(
            onnx.helper.make_node(
                _DQ,
                [name, f"{name}_scale", f"{name}_zero_point"],
                [f"{name}_dequantized"],
                f"{name}_DequantizeLinear",
                axis=0,
            )
        )
        node.input[2] = f"{name}_dequantized"
    # Initializer-only nodes first keeps the graph topologically sorted.
    nodes = [*added, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
