"""Frame brightness (mean luma) and the brightness range an INT8 model was calibrated on.

``calibrate`` records the calibration frames' mean-luma percentiles in the model's
``metadata_props`` (``BRIGHTNESS_KEY``); the daemon's drift check reads them back and warns
when live frames are darker or brighter than anything the calibrator saw. Both sides measure
with ``mean_luma``, so the numbers are comparable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx

BRIGHTNESS_KEY = "edgewatch.calibration_brightness"
_PERCENTILES = (0, 5, 50, 95, 100)
# Rec. 601 luma weights in OpenCV's BGR channel order.
LUMA_BGR = np.array([0.114, 0.587, 0.299], dtype=np.float32)
# Every 8th pixel each way: the mean of a 1080p frame from ~32k samples, cheap enough to run
# on every frame the daemon processes.
LUMA_STRIDE = 8


class MetadataError(ValueError):
    """The model's edgewatch metadata is missing or malformed."""


def mean_luma(bgr: npt.NDArray[np.uint8]) -> float:
    """Mean luma (0..255) of a BGR frame (any HxWx3 view, e.g. ``rgb[..., ::-1]``), from a
    strided subsample."""
    sample = bgr[::LUMA_STRIDE, ::LUMA_STRIDE].reshape(-1, 3)
    return float(sample.mean(axis=0, dtype=np.float32) @ LUMA_BGR)


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
        """Percentiles of the calibration frames' ``mean_luma`` values."""
        if not values:
            raise ValueError("no brightness values")
        p = [round(float(v), 2) for v in np.percentile(np.asarray(values), _PERCENTILES)]
        return cls(p[0], p[1], p[2], p[3], p[4], len(values))


def read_calibration_brightness(model_path: Path) -> BrightnessRange | None:
    """The calibration brightness recorded in the ONNX model ``model_path``; None for a model
    without it (FP32, or quantized by another tool)."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # OSError, or protobuf's DecodeError (no type stubs here)
        raise MetadataError(f"cannot read {model_path} as an ONNX model: {exc}") from exc
    raw = next((p.value for p in model.metadata_props if p.key == BRIGHTNESS_KEY), None)
    if raw is None:
        return None
    try:
        return BrightnessRange(**json.loads(raw))
    except (TypeError, json.JSONDecodeError) as exc:
        raise MetadataError(f"{model_path}: malformed {BRIGHTNESS_KEY}: {exc}") from exc
