"""The accuracy gate: an INT8 model replaces nothing unless its mAP drop is within bounds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from calib.evaluate import MapReport


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
