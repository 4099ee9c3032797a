"""What ``calibrate`` records inside the INT8 model (``metadata_props``) for later readers:
the daemon's drift check (calibration brightness range, read by
``daemon.monitor.brightness.read_calibration_brightness``) and operators (what stayed float)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import onnx

from daemon.monitor.brightness import BRIGHTNESS_KEY, BrightnessRange

INT8_KEY = "edgewatch.int8"


@dataclass(frozen=True)
class Int8Record:
    """How the model was quantized (also written as the JSON report beside the model)."""

    method: str
    recipe: str
    activations: str
    weights: str
    bias: str
    op_types: tuple[str, ...]
    float_blocks: tuple[str, ...]
    float_nodes: int
    calibration_images: int
    calibration_source: str
    brightness: BrightnessRange
    # Versions of the libraries that computed the ranges and wrote the graph: their
    # calibrators and quantizers change between releases, so a model that differs from a
    # documented one is first checked against these.
    libraries: dict[str, str]


def write_metadata(model: onnx.ModelProto, record: Int8Record) -> None:
    """Set (replace) the edgewatch keys in ``model.metadata_props``."""
    values = {
        INT8_KEY: json.dumps(asdict(record), sort_keys=True),
        BRIGHTNESS_KEY: json.dumps(asdict(record.brightness), sort_keys=True),
    }
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
