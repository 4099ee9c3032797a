"""Detection agreement between two models on the same frame, without labels.

The reference (FP32) detections play the role of ground truth: a candidate (INT8) box agrees
when it has the same class and IoU >= 0.5 with a reference box, each box used once (greedy
by descending IoU). F1 of those counts is the label-free accuracy signal used by
``edgewatch evaluate --reference`` and by the daemon's shadow-inference drift check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calib.metrics import box_iou, match_predictions
from daemon.postprocess.yolo import Detections

DEFAULT_IOU = 0.5


@dataclass(frozen=True, slots=True)
class AgreementCounts:
    """Matched / unmatched box counts; add them up over frames, then read ``f1``."""

    matched: int = 0
    only_candidate: int = 0
    only_reference: int = 0

    def __add__(self, other: AgreementCounts) -> AgreementCounts:
        return AgreementCounts(
            self.matched + other.matched,
            self.only_candidate + other.only_candidate,
            self.only_reference + other.only_reference,
        )

    @property
    def f1(self) -> float:
        """F1 of the candidate against the reference; 1.0 when both found nothing."""
        denominator = 2 * self.matched + self.only_candidate + self.only_reference
        return 1.0 if denominator == 0 else 2 * self.matched / denominator

    @property
    def precision(self) -> float:
        found = self.matched + self.only_candidate
        return 1.0 if found == 0 else self.matched / found

    @property
    def recall(self) -> float:
        expected = self.matched + self.only_reference
        return 1.0 if expected == 0 else self.matched / expected


def agreement(
    candidate: Detections, reference: Detections, iou: float = DEFAULT_IOU
) -> AgreementCounts:
    """Class-aware one-to-one matching of ``candidate`` to ``reference`` boxes at ``iou``."""
    if len(candidate) == 0 or len(reference) == 0:
        return AgreementCounts(0, len(candidate), len(reference))
    ious = box_iou(reference.boxes, candidate.boxes)
    matched = int(
        match_predictions(candidate.class_ids, reference.class_ids, ious, np.array([iou])).sum()
    )
    return AgreementCounts(matched, len(candidate) - matched, len(reference) - matched)
