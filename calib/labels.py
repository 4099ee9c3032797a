"""YOLO-format ground truth: one ``<stem>.txt`` per image, lines ``class xc yc w h`` (0..1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt


class LabelError(ValueError):
    """A label file is malformed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """Labels of one image in source pixels: ``boxes`` xyxy, ``class_ids``."""

    boxes: npt.NDArray[np.float64]
    class_ids: npt.NDArray[np.int64]


def read_yolo_labels(path: Path, width: int, height: int) -> GroundTruth:
    """Read ``path`` (a missing file is a background image with no boxes) and scale the
    normalised xywh boxes to ``width`` x ``height`` pixels as xyxy."""
    if not path.is_file():
        return GroundTruth(np.zeros((0, 4)), np.zeros(0, np.int64))
    rows: list[list[float]] = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise LabelError(f"{path}:{n}: expected 'class xc yc w h', got {len(fields)} fields")
        try:
            rows.append([float(v) for v in fields])
        except ValueError as exc:
            raise LabelError(f"{path}:{n}: {exc}") from None
    if not rows:
        return GroundTruth(np.zeros((0, 4)), np.zeros(0, np.int64))
    table = np.asarray(rows, dtype=np.float64)
    xc, yc = table[:, 1] * width, table[:, 2] * height
    half_w, half_h = table[:, 3] * width / 2, table[:, 4] * height / 2
    boxes = np.stack([xc - half_w, yc - half_h, xc + half_w, yc + half_h], axis=1)
    return GroundTruth(boxes, table[:, 0].astype(np.int64))
