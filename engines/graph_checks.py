"""Static checks of the graph edgewatch hands to TensorRT's ONNX parser, with ``onnx`` only.

Each rule is one TensorRT's parser enforces (or documents) and each found a real defect:
they run before every engine build, so a bad graph gets one line per problem instead of a
parser error deep in a build, and they run as fast unit tests on machines without TensorRT.
Where TensorRT-RTX (the parser the test suite runs) and JetPack's TensorRT 10.3 document
different support, the stricter rule is the one checked here.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from engines.qdq import non_8bit_dequantize_inputs


def _image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto | None:
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    return inputs[0] if len(inputs) == 1 else None


def uint8_input_problems(model: onnx.ModelProto) -> list[str]:
    """A UINT8 network input must feed Cast nodes only: TensorRT rejects UINT8 as the input
    of any other layer ("first input has type UInt8 but must have type Float, Half, ...")."""
    problems = []
    for value in model.graph.input:
        if value.type.tensor_type.elem_type != TensorProto.UINT8:
            continue
        for node in model.graph.node:
            if value.name in node.input and node.op_type != "Cast":
                problems.append(
                    f"uint8 input {value.name!r} feeds {node.op_type} node {node.name!r}; "
                    "TensorRT takes a uint8 input only into a Cast"
                )
    return problems


def dequantize_problems(model: onnx.ModelProto) -> list[str]:
    """DequantizeLinear must dequantize 8-bit data (TensorRT 10.3: INT8/FP8; no INT32 biases)."""
    nodes = non_8bit_dequantize_inputs(model)
    if not nodes:
        return []
    shown = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
    return [
        f"{len(nodes)} DequantizeLinear node(s) take a non-8-bit input ({shown}); TensorRT "
        "dequantizes int8 only: keep biases in float (quantize without QuantizeBias)"
    ]


def fixed_hw_problems(model: onnx.ModelProto) -> list[str]:
    """Every axis of the prepared image input but the batch must be fixed (height and width
    included), so the only dynamic axis of the engine's I/O is the batch."""
    image = _image_input(model)
    if image is None:
        return ["the graph must have exactly one image input"]
    dims = image.type.tensor_type.shape.dim
    dynamic = [axis for axis in range(1, len(dims)) if not dims[axis].HasField("dim_value")]
    if len(dims) != 4 or dynamic:
        return [f"image input {image.name!r} has dynamic axes {dynamic} besides the batch"]
    return []


# onnx-tensorrt documents ONNX opsets 9 to 20 for TensorRT 10.0, and no release up to 10.5
# raises it; JetPack 6 ships 10.3.
MAX_OPSET = 20
_RESIZE_MODES = frozenset({b"nearest", b"linear"})
_RESIZE_COORDINATES = frozenset(
    {b"half_pixel", b"pytorch_half_pixel", b"tf_half_pixel_for_nn", b"asymmetric", b"align_corners"}
)


def opset_problems(model: onnx.ModelProto) -> list[str]:
    """The default-domain opset must be one TensorRT 10.3's parser documents (<= 20)."""
    problems = []
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > MAX_OPSET:
            problems.append(
                f"ONNX opset {entry.version} is above {MAX_OPSET}, the newest TensorRT 10.3 "
                "(JetPack 6) documents; re-export with opset <= 20"
            )
    return problems


def quantize_node_problems(model: onnx.ModelProto) -> list[str]:
    """Q/DQ nodes TensorRT 10.3 cannot take: blocked quantization (``block_size``, opset 21)."""
    return [
        f"{node.op_type} node {node.name!r} uses blocked quantization (block_size), which "
        "TensorRT 10.3 does not support"
        for node in model.graph.node
        if node.op_type in ("QuantizeLinear", "DequantizeLinear")
        and any(a.name == "block_size" and a.i > 0 for a in node.attribute)
    ]


def resize_problems(model: onnx.ModelProto) -> list[str]:
    """Resize with a mode or coordinate transformation TensorRT 10.3 does not list."""
    problems = []
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        attrs = {a.name: a.s for a in node.attribute}
        mode = attrs.get("mode", b"nearest")
        coords = attrs.get("coordinate_transformation_mode", b"half_pixel")
        if mode not in _RESIZE_MODES or coords not in _RESIZE_COORDINATES:
            problems.append(
                f"Resize node {node.name!r} uses mode={mode.decode()} "
                f"coordinate_transformation_mode={coords.decode()}, not supported by TensorRT 10.3"
            )
    return problems


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """Every problem the checks above find in a graph prepared for a TensorRT build."""
    return [
        *opset_problems(model),
        *uint8_input_problems(model),
        *dequantize_problems(model),
        *quantize_node_problems(model),
        *resize_problems(model),
        *fixed_hw_problems(model),
    ]
