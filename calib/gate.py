"""The accuracy gate: an INT8 model replaces nothing unless its mAP drop is within bounds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from calib.evaluate import MapReport

# Ultralytics documents 0.373 (YOLOv8n) to 0.539 (YOLOv8x) mAP50-95 on COCO val2017 (this
# repository's yolov8n: 0.408 on coco_eval). An FP32 score under 0.15, 40 % of the smallest,
# means the labels do not describe the images (another data set, other class ids), so the
# drop the gate would compute is meaningless.
MIN_REFERENCE_MAP = 0.15


class GateError(ValueError):
    """The FP32 reference score makes the gate meaningless; the message says why."""


def check_reference(fp32: MapReport, minimum: float) -> None:
    """Raise ``GateError`` when the FP32 mAP50-95 is below ``minimum``."""
    if fp32.map50_95 < minimum:
        raise GateError(
            f"FP32 mAP50-95 {fp32.map50_95:.4f} on {fp32.images} images ({fp32.instances} "
            f"labelled boxes) is below {minimum:g}: the labels do not match these images or "
            "this model's classes (wrong --labels folder?); a model documented lower needs "
            "--min-fp32-map"
        )


@dataclass(frozen=True)
class GateResult:
    fp32: MapReport
    int8: MapReport
    max_drop_points: float
    # INT8 / FP32 images per second at the measured batch, None when not measured.
    speed_ratio: float | None = None

    @property
    def drop_points(self) -> float:
        """mAP50-95 lost, in points (1 point = 0.01 mAP)."""
        return (self.fp32.map50_95 - self.int8.map50_95) * 100

    @property
    def passed(self) -> bool:
        return self.drop_points <= self.max_drop_points

    def summary(self) -> str:
        speed = "" if self.speed_ratio is None else f" speed_ratio={self.speed_ratio:.2f}x"
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"fp32 {self.fp32.line()} | int8 {self.int8.line()} | "
            f"drop={self.drop_points:.2f} points (max {self.max_drop_points:g}){speed} {verdict}"
        )


def promote(candidate: Path, out: Path) -> None:
    """Atomically move the gated ``candidate`` to ``out`` (same filesystem)."""
    os.replace(candidate, out)
