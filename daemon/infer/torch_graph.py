"""Run an ONNX YOLOv8 graph with PyTorch operators, so the ``torch`` backend needs neither
Ultralytics nor its pickled ``.pt`` classes at run time: it executes the same ``.onnx`` file
as the ONNX Runtime backend.

The graph is *specialised* per input shape: one pass over the nodes on an example input
evaluates everything that depends only on shapes and constants (the dynamic-batch shape
arithmetic, anchor grids, strides) once, on the CPU, and keeps only the nodes that touch image
data as a flat list of steps. A step's tensor operands are moved to the device (and to the
compute dtype) at that time; its shape-like parameters stay on the CPU as Python values, so
running a specialised program never synchronises with the GPU and can be captured in a CUDA
graph.

Only the operators an Ultralytics detection export uses are implemented; any other is a
clear ``GraphError`` at load time rather than a wrong answer later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

Value: TypeAlias = "torch.Tensor | None"
OpFn: TypeAlias = Callable[[list[Value], dict[str, Any], "_Ctx"], list[torch.Tensor]]

_SHAPE_OPS = frozenset({"Shape"})
# Per operator, the inputs that are parameters read as Python values (shapes, axes, scales);
# every other input is a tensor operand that lives on the compute device.
_PARAM_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Split": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Expand": frozenset({1}),
    "Resize": frozenset({1, 2, 3}),
    "Slice": frozenset({1, 2, 3, 4}),
    "ConstantOfShape": frozenset({0}),
    "Range": frozenset({0, 1, 2}),
}
_ONNX_INT_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}
_ONNX_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
)


class GraphError(ValueError):
    """The ONNX graph uses something this interpreter does not run."""


@dataclass(frozen=True)
class _Ctx:
    """Where a node runs: the compute dtype for floats (static evaluation uses float32)."""

    float_dtype: torch.dtype


def _ints(value: Value) -> list[int]:
    assert value is not None
    return [int(v) for v in value.reshape(-1).tolist()]


def _floats(value: Value) -> list[float]:
    assert value is not None
    return [float(v) for v in value.reshape(-1).tolist()]


def _t(value: Value) -> torch.Tensor:
    assert value is not None
    return value


# -- operators ----------------------------------------------------------------------------


def _conv(ins: list[Value], a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
    x, w = _t(ins[0]), _t(ins[1])
    bias = ins[2] if len(ins) > 2 else None
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise GraphError("Conv auto_pad is not supported")
    pads = list(a.get("pads", [0, 0, 0, 0]))
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        x = F.pad(x, [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])])
        pads = [0] * len(pads)
    out = F.conv2d(
        x, w, bias, stride=list(a.get("strides", [1, 1])), padding=pads[:half],
        dilation=list(a.get("dilations", [1, 1])), groups=int(a.get("group", 1)),
    )  # fmt: skip
    return [out]


def _maxpool(ins: list[Value], a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
    pads = list(a.get("pads", [0, 0, 0, 0]))
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        raise GraphError("MaxPool with asymmetric pads is not supported")
    out = F.max_pool2d(
        _t(ins[0]), list(a["kernel_shape"]), list(a.get("strides", a["kernel_shape"])),
        pads[:half], list(a.get("dilations", [1, 1])), bool(a.get("ceil_mode", 0)),
    )  # fmt: skip
    return [out]


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> OpFn:
    def run(ins: list[Value], _a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
        return [fn(_t(ins[0]), _t(ins[1]))]

    return run


def _div(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if x.is_floating_point():
        return x / y
    return torch.div(x, y, rounding_mode="trunc")


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> OpFn:
    def run(ins: list[Value], _a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
        return [fn(_t(ins[0]))]

    return run


def _concat(ins: list[Value], a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
    return [torch.cat([_t(v) for v in ins], dim=int(a["axis"]))]


def _split(ins: list[Value], a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
    x, axis = _t(ins[0]), int(a.get("axis", 0))
    if len(ins) > 1 and ins[1] is not None:
        sizes = _ints(ins[1])
    else:
        parts = int(a["num_outputs"])
        step = -(-x.shape[axis] // parts)
        sizes = [min(step, x.shape[axis] - i * step) for i in range(parts)]
    return list(torch.split(x, sizes, dim=axis))


def _reshape(ins: list[Value], a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
    x, shape = _t(ins[0]), _ints(ins[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _unsqueeze(ins: list[Value], a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
    x = _t(ins[0])
    axes = _ints(ins[1]) if len(ins) > 1 else list(a["axes"])
    rank = x.dim() + len(axes)
    for axis in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(axis)
    return [x]


def _squeeze(ins: list[Value], a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
    x = _t(ins[0])
    axes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else a.get("axes")
    if axes is None:
        return [x.squeeze()]
    for axis in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(axis)
    return [x]


def _shape(ins: list[Value], a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
    dims = list(_t(ins[0]).shape)
    dims = dims[a.get("start", 0) : a.get("end", len(dims))]
    return [torch.tensor(dims, dtype=torch.int64)]


def _gather(ins: list[Value], a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
    data, idx = _t(ins[0]), _t(ins[1]).to(torch.int64)
    axis = int(a.get("axis", 0)) % data.dim()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    picked = data.index_select(axis, idx.reshape(-1).to(data.device))
    shape = list(data.shape[:axis]) + list(idx.shape) + list(data.shape[axis + 1 :])
    return [picked.reshape(shape)]


def _range(ins: list[Value], _a: dict[str, Any], c: _Ctx) -> list[torch.Tensor]:
    start, limit, delta = (_t(v) for v in ins[:3])
    if start.is_floating_point():
        return [torch.arange(float(start), float(limit), float(delta), dtype=torch.float32)]
    return [torch.arange(int(start), int(limit), int(delta), dtype=start.dtype)]


def _cast(ins: list[Value], a: dict[str, Any], c: _Ctx) -> list[torch.Tensor]:
    to = int(a["to"])
    if to in _ONNX_FLOAT_TYPES:
        return [_t(ins[0]).to(c.float_dtype)]
    if to not in _ONNX_INT_DTYPES:
        raise GraphError(f"Cast to ONNX type {to} is not supported")
    return [_t(ins[0]).to(_ONNX_INT_DTYPES[to])]


def _expand(ins: list[Value], _a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
    x = _t(ins[0])
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(ins[1])))
    return [x.expand(shape)]


def _constant_of_shape(ins: list[Value], a: dict[str, Any], c: _Ctx) -> list[torch.Tensor]:
    proto = a.get("value")
    value = numpy_helper.to_array(proto) if proto is not None else np.zeros(1, np.float32)
    fill = _tensor_from_numpy(value, c.float_dtype).reshape(-1)[0]
    return [torch.full(_ints(ins[0]), fill.item(), dtype=fill.dtype)]


def _transpose(ins: list[Value], a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
    x = _t(ins[0])
    perm = list(a.get("perm", reversed(range(x.dim()))))
    return [x.permute(perm)]


def _resize(ins: list[Value], a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
    mode = a.get("mode", b"nearest")
    transform = a.get("coordinate_transformation_mode", b"half_pixel")
    nearest = a.get("nearest_mode", b"round_prefer_floor")
    if (mode, transform, nearest) != (b"nearest", b"asymmetric", b"floor"):
        raise GraphError(f"Resize {mode!r}/{transform!r}/{nearest!r} is not supported")
    x = _t(ins[0])
    if len(ins) > 3 and ins[3] is not None and ins[3].numel():
        return [F.interpolate(x, size=_ints(ins[3])[2:], mode="nearest")]
    scales = _floats(ins[2])
    if scales[:2] != [1.0, 1.0]:
        raise GraphError("Resize of the batch or channel axis is not supported")
    return [F.interpolate(x, scale_factor=scales[2:], mode="nearest")]


def _slice(ins: list[Value], _a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
    x = _t(ins[0])
    starts, ends = _ints(ins[1]), _ints(ins[2])
    axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
    steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step <= 0:
            raise GraphError("Slice with a non-positive step is not supported")
        size = x.shape[axis]
        index[axis % x.dim()] = slice(
            max(-size, min(start, size)), max(-size, min(end, size)), step
        )
    return [x[tuple(index)]]


def _softmax(ins: list[Value], a: dict[str, Any], _c: _Ctx) -> list[torch.Tensor]:
    return [torch.softmax(_t(ins[0]), dim=int(a.get("axis", -1)))]


def _constant(_ins: list[Value], a: dict[str, Any], c: _Ctx) -> list[torch.Tensor]:
    if "value" not in a:
        raise GraphError("Constant without a tensor 'value' is not supported")
    return [_tensor_from_numpy(numpy_helper.to_array(a["value"]), c.float_dtype)]


_OPS: dict[str, OpFn] = {
    "Conv": _conv,
    "MaxPool": _maxpool,
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(_div),
    "Sigmoid": _unary(torch.sigmoid),
    "Relu": _unary(torch.relu),
    "Concat": _concat,
    "Split": _split,
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Shape": _shape,
    "Gather": _gather,
    "Range": _range,
    "Cast": _cast,
    "Expand": _expand,
    "ConstantOfShape": _constant_of_shape,
    "Transpose": _transpose,
    "Resize": _resize,
    "Slice": _slice,
    "Softmax": _softmax,
    "Constant": _constant,
}


def _tensor_from_numpy(array: np.ndarray[Any, Any], float_dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(array, copy=True))
    return tensor.to(float_dtype) if tensor.is_floating_point() else tensor


# -- program ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    op: str
    fn: OpFn
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]


@dataclass(frozen=True)
class _Step:
    fn: OpFn
    # Each input is either the name of a value computed at run time or a bound tensor.
    inputs: tuple[str | torch.Tensor | None, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]


class SpecialisedProgram:
    """The data-dependent nodes of a graph for one input shape; call it with that shape."""

    def __init__(
        self, steps: Sequence[_Step], input_name: str, output_name: str, ctx: _Ctx
    ) -> None:
        self._steps = tuple(steps)
        self._input = input_name
        self._output = output_name
        self._ctx = ctx

    @property
    def steps(self) -> int:
        return len(self._steps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {self._input: x}
        for step in self._steps:
            ins: list[Value] = [values[v] if isinstance(v, str) else v for v in step.inputs]
            for name, out in zip(step.outputs, step.fn(ins, step.attrs, self._ctx), strict=False):
                values[name] = out
        return values[self._output]


class OnnxGraph:
    """A loaded ONNX graph ready to be specialised for a device, dtype and input shape."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        inputs = [i.name for i in graph.input if i.name not in initializers]
        if len(inputs) != 1 or not graph.output:
            raise GraphError("expected one image input and at least one output")
        self.input_name = inputs[0]
        self.output_name = graph.output[0].name
        unsupported = sorted({n.op_type for n in graph.node if n.op_type not in _OPS})
        if unsupported:
            raise GraphError(f"operators not supported by the torch backend: {unsupported}")
        self._initializers = initializers
        self._nodes = [
            _Node(
                n.op_type,
                _OPS[n.op_type],
                tuple(n.input),
                tuple(n.output),
                {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute},
            )
            for n in graph.node
        ]
        # Initializers already converted for a (device, dtype, layout): every specialisation
        # (batch bucket, canvas, in-flight slot) shares one copy of the weights on the GPU.
        self._converted: dict[tuple[str, bool, torch.device, torch.dtype, bool], torch.Tensor] = {}

    def specialise(
        self, example: torch.Tensor, float_dtype: torch.dtype, channels_last: bool = False
    ) -> SpecialisedProgram:
        """Fold every shape/constant-only node for ``example``'s shape; keep the rest as steps.

        ``example`` (on the target device, in ``float_dtype``) is run through the graph once.
        Not thread-safe (the converted-weights cache): callers serialise specialisations.
        """
        device = example.device
        static_ctx = _Ctx(torch.float32)
        static: dict[str, torch.Tensor] = {
            name: _tensor_from_numpy(arr, torch.float32) for name, arr in self._initializers.items()
        }
        dynamic: dict[str, torch.Tensor] = {self.input_name: example}
        on_device: dict[tuple[str, bool], torch.Tensor] = {}

        def convert(name: str, weight: bool) -> torch.Tensor:
            tensor = static[name]
            tensor = tensor.to(device, float_dtype if tensor.is_floating_point() else None)
            if weight and channels_last and tensor.dim() == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            return tensor

        def operand(name: str, weight: bool) -> torch.Tensor:
            key = (name, weight)
            if key not in on_device:
                if name in self._initializers:
                    shared = (name, weight, device, float_dtype, channels_last)
                    if shared not in self._converted:
                        self._converted[shared] = convert(name, weight)
                    on_device[key] = self._converted[shared]
                else:
                    # Folded constants depend on the input shape; only weights are shared.
                    on_device[key] = convert(name, weight)
            return on_device[key]

        steps: list[_Step] = []
        for node in self._nodes:
            is_dynamic = node.op not in _SHAPE_OPS and any(n in dynamic for n in node.inputs if n)
            if not is_dynamic:
                ins: list[Value] = [
                    dynamic.get(n, static.get(n)) if n else None for n in node.inputs
                ]
                for name, out in zip(
                    node.outputs, node.fn(ins, node.attrs, static_ctx), strict=False
                ):
                    static[name] = out
                continue
            params = _PARAM_INPUTS.get(node.op, frozenset())
            bound: list[str | torch.Tensor | None] = []
            for i, name in enumerate(node.inputs):
                if not name:
                    bound.append(None)
                elif name in dynamic:
                    bound.append(name)
                elif i in params:
                    bound.append(static[name])
                else:
                    bound.append(operand(name, weight=node.op == "Conv" and i == 1))
            step = _Step(node.fn, tuple(bound), node.outputs, node.attrs)
            run_ins: list[Value] = [dynamic[v] if isinstance(v, str) else v for v in bound]
            ctx = _Ctx(float_dtype)
            for name, out in zip(node.outputs, node.fn(run_ins, node.attrs, ctx), strict=False):
                dynamic[name] = out
            steps.append(step)
        if self.output_name not in dynamic:
            raise GraphError("the graph output does not depend on the input image")
        return SpecialisedProgram(steps, self.input_name, self.output_name, _Ctx(float_dtype))
