"""What can be known about a model file without starting a runtime: ``check-config``'s view.

``class_names_of`` parses the ONNX file (no external data, no session, no GPU), checks it is
a well-formed model with a YOLOv8-shaped head, and reads its class names as every backend
does. A file that fails here would fail at ``run`` too, only later and after the broker
connection is up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import onnx

from daemon.infer.backend import BackendError, parse_class_names

# [N, 4 box coordinates + classes, anchors].
_HEAD_RANK: Final = 3
_BOX_COORDS: Final = 4


def class_names_of(path: Path) -> tuple[str, ...]:
    """The class names of the ONNX model at ``path``; ``BackendError`` says why it cannot run."""
    try:
        # The path, not the loaded proto: the checker then also finds external data files.
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, ValidationError, OSError: all mean "not a model"
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise BackendError(f"{path} is not a loadable ONNX model: {reason}") from None
    outputs = model.graph.output
    if not outputs:
        raise BackendError(f"{path}: the model has no outputs")
    dims = outputs[0].type.tensor_type.shape.dim
    if len(dims) != _HEAD_RANK:
        raise BackendError(
            f"{path}: output {outputs[0].name!r} has {len(dims)} axes; expected a YOLOv8 head "
            "[N, 4 + classes, anchors]"
        )
    channels = dims[1].dim_value if dims[1].HasField("dim_value") else None
    if channels is not None and channels <= _BOX_COORDS:
        raise BackendError(f"{path}: output {outputs[0].name!r} has no class channels")
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    return parse_class_names(
        metadata.get("names"), None if channels is None else channels - _BOX_COORDS
    )
