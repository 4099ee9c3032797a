"""Detection agreement between two detectors on the same frame: class-aware one-to-one
matching at an IoU threshold, summarised as precision / recall / F1.

The one implementation of box IoU and label-free agreement: the daemon's drift check (INT8
against its FP32 shadow), ``edgewatch evaluate --reference`` and the mAP evaluator's IoU
(``calib``) all use it. The reference detections play the role of ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daemon.postprocess.iou import box_iou
from daemon.postprocess.yolo import Detections


@dataclass(frozen=True, slots=True)
class Agreement:
    """Counts from matching ``candidate`` detections against ``reference`` detections;
    ``Agreement()`` is the zero to sum frames onto."""

    matched: int = 0
    reference: int = 0
    candidate: int = 0

    def __add__(self, other: Agreement) -> Agreement:
        return Agreement(
            self.matched + other.matched,
            self.reference + other.reference,
            self.candidate + other.candidate,
        )

    @property
    def precision(self) -> float:
        """Share of candidate boxes that match a reference box (1.0 when there are none)."""
        return self.matched / self.candidate if self.candidate else 1.0

    @property
    def recall(self) -> float:
        """Share of reference boxes that a candidate box matches (1.0 when there are none)."""
        return self.matched / self.reference if self.reference else 1.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall; 1.0 when both sides are empty."""
        total = self.reference + self.candidate
        return 2 * self.matched / total if total else 1.0


def match(reference: Detections, candidate: Detections, iou: float = 0.5) -> Agreement:
    """Greedy one-to-one matching, highest IoU first, same class only, IoU >= ``iou``.

    Counts add up over frames (``+``); read ``f1`` from the total."""
    if len(reference) == 0 or len(candidate) == 0:
        return Agreement(0, len(reference), len(candidate))
    ious = box_iou(reference.boxes, candidate.boxes)
    ious[reference.class_ids[:, None] != candidate.class_ids[None, :]] = 0.0
    rows, cols = np.nonzero(ious >= iou)
    order = np.argsort(-ious[rows, cols], kind="stable")
    used_ref = np.zeros(len(reference), dtype=bool)
    used_cand = np.zeros(len(candidate), dtype=bool)
    matched = 0
    for r, c in zip(rows[order], cols[order], strict=True):
        if not used_ref[r] and not used_cand[c]:
            used_ref[r] = used_cand[c] = True
            matched += 1
    return Agreement(matched, len(reference), len(candidate))
