"""What ``calibrate`` records inside the INT8 model (``metadata_props``) for later readers:
the daemon's drift check (calibration brightness range) and operators (what stayed float)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

INT8_KEY = "edgewatch.int8"
BRIGHTNESS_KEY = "edgewatch.calibration_brightness"
_PERCENTILES = (0, 5, 50, 95, 100)


class MetadataError(ValueError):
    """The model's edgewatch metadata is missing or malformed."""


@dataclass(frozen=True)
class BrightnessRange:
    """Mean-luma (0..255) distribution of the calibration frames."""

    p0: float
    p5: float
    p50: float
    p95: float
    p100: float
    frames: int

    @property
    def covered(self) -> tuple[float, float]:
        """The range the calibration set covered (min..max): live frames outside it were never
        seen by the calibrator, which is what the daemon warns about."""
        return (self.p0, self.p100)

    @classmethod
    def from_values(cls, values: list[float]) -> BrightnessRange:
        if not values:
            raise ValueError("no brightness values")
        p = [round(float(v), 2) for v in np.percentile(np.asarray(values), _PERCENTILES)]
        return cls(p[0], p[1], p[2], p[3], p[4], len(values))


@dataclass(frozen=True)
class Int8Record:
    """How the model was quantized (also written as the JSON report beside the model)."""

    method: str
    activations: str
    weights: str
    op_types: tuple[str, ...]
    float_blocks: tuple[str, ...]
    float_nodes: int
    calibration_images: int
    calibration_source: str
    brightness: BrightnessRange


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


def read_brightness(model_path: Path) -> BrightnessRange | None:
    """The calibration brightness recorded in ``model_path``; None for a model without it."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except (OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise MetadataError(f"cannot read {model_path}: {exc}") from exc
    raw = next((p.value for p in model.metadata_props if p.key == BRIGHTNESS_KEY), None)
    if raw is None:
        return None
    try:
        return BrightnessRange(**json.loads(raw))
    except (TypeError, json.JSONDecodeError) as exc:
        raise MetadataError(f"{model_path}: malformed {BRIGHTNESS_KEY}: {exc}") from exc
