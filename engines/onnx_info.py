"""Facts about an ONNX model that the engine build and cache need, read with ``onnx`` only."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import onnx

from engines.plan import BatchProfile, ModelTraits
from engines.qdq import has_qdq, summarize

_CHUNK = 1 << 20


class InputLayout(str, Enum):
    # What the daemon's batcher produces; normalisation runs inside the graph.
    UINT8_NHWC = "uint8-nhwc"
    # The plain Ultralytics export: float32 RGB 0..1, channels first.
    FLOAT_NCHW = "float-nchw"


class ModelFileError(ValueError):
    """The ONNX file is missing or not a usable single-input detector; operator-facing text."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    layout: InputLayout
    # Dimensions as declared; ``None`` for a symbolic (dynamic) axis.
    dims: tuple[int | None, ...]


@dataclass(frozen=True)
class OnnxInfo:
    path: Path
    sha256: str
    input: InputSpec
    output_names: tuple[str, ...]
    traits: ModelTraits


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, streamed (models can be hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _dims(value: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    shape = value.type.tensor_type.shape
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in shape.dim)


def _layout(value: onnx.ValueInfoProto, dims: tuple[int | None, ...]) -> InputLayout:
    elem = value.type.tensor_type.elem_type
    if len(dims) == 4 and elem == onnx.TensorProto.UINT8 and dims[3] == 3:
        return InputLayout.UINT8_NHWC
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    if len(dims) == 4 and elem in floats and dims[1] == 3:
        return InputLayout.FLOAT_NCHW
    raise ModelFileError(
        f"input {value.name!r} is {onnx.TensorProto.DataType.Name(elem)} {list(dims)}; expected "
        "uint8 [N,H,W,3] or float [N,3,H,W]"
    )


def read_onnx_info(path: Path) -> OnnxInfo:
    """Inspect ``path`` without loading external weights; raises ``ModelFileError``."""
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...
        raise ModelFileError(f"{path} is not a readable ONNX model: {exc}") from exc
    return info_from_model(model, path, file_sha256(path))


def info_from_model(model: onnx.ModelProto, path: Path, sha256: str) -> OnnxInfo:
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelFileError(f"{path}: expected one image input, found {[i.name for i in inputs]}")
    dims = _dims(inputs[0])
    layout = _layout(inputs[0], dims)
    quantized = has_qdq(model)
    traits = ModelTraits(
        has_qdq=quantized,
        is_fp16=weights_are_fp16(model),
        qdq_asymmetric=quantized and not summarize(model).tensorrt_compatible,
    )
    return OnnxInfo(
        path=path,
        sha256=sha256,
        input=InputSpec(inputs[0].name, layout, dims),
        output_names=tuple(o.name for o in graph.output),
        traits=traits,
    )


_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def weights_are_fp16(model: onnx.ModelProto) -> bool:
    """Whether every Conv/ConvTranspose/Gemm/MatMul weight initializer is float16.

    That is what makes a model FP16 for a strongly typed build. Counting every initializer
    would call no real FP16 model FP16: converters keep small float32 tensors such as the
    Resize scales on purpose.
    """
    inits = {i.name: i.data_type for i in model.graph.initializer}
    weights = [
        inits[node.input[1]]
        for node in model.graph.node
        if node.op_type in _WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in inits
    ]
    return bool(weights) and all(w == onnx.TensorProto.FLOAT16 for w in weights)


def profile_shapes(
    spec: InputSpec, batch: BatchProfile, input_hw: tuple[int, int]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """MIN/OPT/MAX input shapes for the optimization profile.

    The batch axis takes the profile; a dynamic height/width takes ``input_hw`` and a fixed
    one must equal it (an engine for 640 cannot serve a batcher letterboxing to 480).
    """
    h_axis, w_axis = (1, 2) if spec.layout is InputLayout.UINT8_NHWC else (2, 3)
    shape: list[int] = []
    for axis, dim in enumerate(spec.dims):
        want = {h_axis: input_hw[0], w_axis: input_hw[1]}.get(axis)
        if axis == 0:
            shape.append(0)
        elif dim is None:
            if want is None:
                raise ModelFileError(f"input {spec.name!r} axis {axis} is dynamic; cannot size it")
            shape.append(want)
        else:
            if want is not None and dim != want:
                raise ModelFileError(
                    f"input {spec.name!r} is fixed to {dim} on axis {axis}, "
                    f"model.input_size asks for {want}"
                )
            shape.append(dim)
    fixed_batch = spec.dims[0]
    if fixed_batch is not None and not batch.min == batch.max == fixed_batch:
        raise ModelFileError(
            f"input {spec.name!r} has a fixed batch of {fixed_batch}; re-export with a dynamic "
            f"batch axis for profile {batch}"
        )
    return (
        (batch.min, *shape[1:]),
        (batch.opt, *shape[1:]),
        (batch.max, *shape[1:]),
    )
