"""The accuracy gate: an INT8 model replaces nothing unless its mAP drop is within bounds."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from calib.evaluate import MapReport
from calib.kernels import QdqKernels, RuntimeRecord

# Ultralytics documents 0.373 (YOLOv8n) to 0.539 (YOLOv8x) mAP50-95 on COCO val2017 (this
# repository's yolov8n: 0.408 on coco_eval). An FP32 score under 0.15, 40 % of the smallest,
# means the labels do not describe the images (another data set, other class ids), so the
# drop the gate would compute is meaningless.
MIN_REFERENCE_MAP = 0.15


# The kernels each recipe's deployment runs, which its gate is judged on: ORT's CPU integer
# kernels for ``ort-cpu``; TensorRT for ``tensorrt``, whose int32 accumulation and float
# rescale ORT's float fake-quantization follows (docs/int8.md).
GATE_KERNELS: dict[str, QdqKernels] = {"ort-cpu": "integer", "tensorrt": "fake-quant"}


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
    """FP32 and INT8 scores of one gate run; ``int8`` holds the INT8 model's score in each
    kernel mode measured and ``gated_on`` the one the verdict uses."""

    fp32: MapReport
    int8: Mapping[QdqKernels, MapReport]
    gated_on: QdqKernels
    max_drop_points: float
    runtime: RuntimeRecord
    # INT8 (integer kernels) / FP32 images per second at the measured batch, None when not
    # measured.
    speed_ratio: float | None = None

    def drop(self, qdq: QdqKernels) -> float:
        """mAP50-95 lost by the INT8 model run in ``qdq`` kernels, in points (0.01 mAP)."""
        return (self.fp32.map50_95 - self.int8[qdq].map50_95) * 100

    @property
    def drop_points(self) -> float:
        """The gated drop, in points."""
        return self.drop(self.gated_on)

    @property
    def passed(self) -> bool:
        return self.drop_points <= self.max_drop_points

    def summary(self) -> str:
        """One line: every score, the kernels the verdict used, the verdict."""
        int8 = " | ".join(
            f"int8 {qdq} {score.line()} drop={self.drop(qdq):.2f}"
            for qdq, score in self.int8.items()
        )
        speed = "" if self.speed_ratio is None else f" speed_ratio={self.speed_ratio:.2f}x"
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"fp32 {self.fp32.line()} | {int8} | gate on {self.runtime.label(self.gated_on)}: "
            f"drop={self.drop_points:.2f} points (max {self.max_drop_points:g}){speed} {verdict}"
        )

    def report(self) -> dict[str, Any]:
        """The JSON form written beside the model."""
        return {
            "fp32": asdict(self.fp32),
            "int8": {qdq: asdict(score) for qdq, score in self.int8.items()},
            "drop_points": {qdq: self.drop(qdq) for qdq in self.int8},
            "gated_on": self.gated_on,
            "runtime": asdict(self.runtime),
            "passed": self.passed,
            "max_drop_points": self.max_drop_points,
            "speed_ratio_batch8": self.speed_ratio,
        }


def promote(candidate: Path, out: Path) -> None:
    """Atomically move the gated ``candidate`` to ``out`` (same filesystem)."""
    os.replace(candidate, out)
