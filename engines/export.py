"""Export YOLOv8 weights to the ONNX the daemon runs, and bake uint8 input handling into it.

``export_onnx`` needs the ``export`` extra (Ultralytics + PyTorch), imported only when called.
``add_uint8_input`` needs only ``onnx``: it prepends Cast/Transpose/Div so the model takes the
batcher's uint8 RGB NHWC batch directly and GPU backends normalise on the GPU instead of
uploading four times the bytes as float32. ``pin_input_hw`` fixes a dynamic height and width,
so an engine built from the graph has static shapes everywhere but the batch axis.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EXPORT_HINT = "pip install 'edgewatch[export]'"
UINT8_LAYOUT_KEY = "edgewatch_input"
UINT8_LAYOUT = "uint8-nhwc"
_FLOAT_ELEMS = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


class ExportError(RuntimeError):
    """Export cannot proceed; the message is for the operator."""


class ExportDependencyError(ExportError):
    """The ``export`` extra (ultralytics, torch) is not installed."""


def export_onnx(
    weights: Path,
    out: Path,
    *,
    imgsz: int = 640,
    opset: int | None = None,
    uint8_input: bool = False,
) -> Path:
    """Export Ultralytics ``weights`` (.pt) to ``out``: dynamic batch, class names in the
    metadata, optionally with a uint8 NHWC input. Returns ``out``."""
    if not weights.is_file():
        raise ExportError(f"weights file not found: {weights}")
    try:
        from ultralytics import YOLO
    except ImportError as exc:
        raise ExportDependencyError(
            f"export needs Ultralytics and PyTorch ({exc.name or 'ultralytics'} is missing): "
            f"{EXPORT_HINT}"
        ) from exc
    # Ultralytics writes next to the weights; work on a copy so a read-only folder is fine.
    with tempfile.TemporaryDirectory(prefix="edgewatch-export-") as tmp:
        local = Path(tmp) / weights.name
        shutil.copyfile(weights, local)
        try:
            produced = YOLO(str(local), task="detect").export(
                format="onnx", imgsz=imgsz, dynamic=True, simplify=True, opset=opset
            )
        except Exception as exc:  # Ultralytics raises many types; the operator needs the text
            raise ExportError(f"Ultralytics export of {weights} failed: {exc}") from exc
        out.parent.mkdir(parents=True, exist_ok=True)
        if uint8_input:
            add_uint8_input_file(Path(produced), out)
        else:
            shutil.move(str(produced), out)
    return out


def add_uint8_input_file(src: Path, dst: Path) -> Path:
    """``add_uint8_input`` from file ``src`` to file ``dst`` (may be the same path)."""
    if not src.is_file():
        raise ExportError(f"model file not found: {src}")
    try:
        model = onnx.load(str(src))
    except Exception as exc:  # DecodeError, OSError...
        raise ExportError(f"{src} is not a readable ONNX model: {exc}") from exc
    wrapped = add_uint8_input(model)
    onnx.checker.check_model(wrapped)
    onnx.save(wrapped, str(dst))
    return dst


def add_uint8_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` whose image input is uint8 RGB ``[N, H, W, 3]``.

    The original float ``[N, 3, H, W]`` 0..1 input becomes an internal tensor computed as
    ``Transpose(Cast(x)) / 255``, the same arithmetic as the CPU path's conversion. The Cast
    comes first because TensorRT takes a UINT8 network input only when it feeds a Cast
    directly (its ONNX parser rejects a Transpose of UINT8). The input keeps its name and its
    symbolic/fixed dimensions; metadata (class names) is kept and ``edgewatch_input`` added.
    """
    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    graph = wrapped.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ExportError(f"expected one image input, found {[i.name for i in inputs]}")
    image = inputs[0]
    tensor_type = image.type.tensor_type
    dims = list(tensor_type.shape.dim)
    elem = tensor_type.elem_type
    if elem == TensorProto.UINT8:
        raise ExportError(f"input {image.name!r} is already uint8")
    if elem not in _FLOAT_ELEMS or len(dims) != 4 or dims[1].dim_value != 3:
        raise ExportError(
            f"input {image.name!r} is not float [N, 3, H, W]; cannot add a uint8 input"
        )
    name = image.name
    internal = f"{name}_float"
    for node in graph.node:
        node.input[:] = [internal if i == name else i for i in node.input]

    nhwc = [dims[0], dims[2], dims[3], dims[1]]
    new_input = helper.make_tensor_value_info(name, TensorProto.UINT8, None)
    new_dims = new_input.type.tensor_type.shape.dim
    for d in nhwc:
        new_dims.add().CopyFrom(d)
    scale = numpy_helper.from_array(np.array(255, dtype=_FLOAT_ELEMS[elem]), f"{name}_255")
    prologue = [
        helper.make_node("Cast", [name], [f"{name}_cast"], to=elem, name=f"{name}_cast"),
        helper.make_node(
            "Transpose",
            [f"{name}_cast"],
            [f"{name}_nchw"],
            perm=[0, 3, 1, 2],
            name=f"{name}_to_nchw",
        ),
        helper.make_node("Div", [f"{name}_nchw", scale.name], [internal], name=f"{name}_norm"),
    ]
    nodes = prologue + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.append(scale)
    position = list(graph.input).index(image)
    graph.input.remove(image)
    graph.input.insert(position, new_input)
    meta = {p.key: p for p in wrapped.metadata_props}
    if UINT8_LAYOUT_KEY in meta:
        meta[UINT8_LAYOUT_KEY].value = UINT8_LAYOUT
    else:
        wrapped.metadata_props.add(key=UINT8_LAYOUT_KEY, value=UINT8_LAYOUT)
    return wrapped


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model`` with float32 inputs and outputs kept, by ONNX Runtime's own
    converter (``onnxruntime`` is already the CPU backend): what a strongly typed TensorRT
    build needs to run FP16 kernels, with the casts at the graph's edges."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted: onnx.ModelProto = convert_float_to_float16(model, keep_io_types=True)
    return converted


def pin_input_hw(model: onnx.ModelProto, hw: tuple[int, int]) -> onnx.ModelProto:
    """Return a copy of ``model`` whose uint8 NHWC image input has height and width ``hw``.

    A dynamic H/W survives into the engine as ``-1`` in every shape TensorRT reports, even
    when the optimization profile allows one size only; with them fixed in the graph the
    engine's only dynamic axis is the batch. A dimension already fixed to another size is an
    ``ExportError`` (an engine for 640 cannot serve a batcher letterboxing to 480).
    """
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    initializers = {i.name for i in pinned.graph.initializer}
    inputs = [i for i in pinned.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ExportError(f"expected one image input, found {[i.name for i in inputs]}")
    image = inputs[0]
    dims = image.type.tensor_type.shape.dim
    if image.type.tensor_type.elem_type != TensorProto.UINT8 or len(dims) != 4:
        raise ExportError(f"input {image.name!r} is not uint8 [N, H, W, 3]; cannot pin H and W")
    for axis, size in ((1, hw[0]), (2, hw[1])):
        dim = dims[axis]
        if dim.HasField("dim_value") and dim.dim_value != size:
            raise ExportError(
                f"input {image.name!r} is fixed to {dim.dim_value} on axis {axis}; "
                f"{size} was asked for"
            )
        dim.Clear()
        dim.dim_value = size
    return pinned
