"""Detection agreement between two detectors on the same frame: class-aware one-to-one
matching at an IoU threshold, summarised as precision / recall / F1.

The one implementation of box IoU and label-free agreement: the daemon's drift check (INT8
against its FP32 shadow), ``edgewatch evaluate --reference`` and the mAP evaluator's IoU
(``calib``) all use it. The reference detections play the role of ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

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


def box_iou(
    a: npt.NDArray[np.floating[Any]], b: npt.NDArray[np.floating[Any]]
) -> npt.NDArray[np.float64]:
    """Pairwise IoU of xyxy boxes ``a`` [n, 4] and ``b`` [m, 4] -> [n, m], in float64.

    Ultralytics' formula (``+ 1e-7`` in the union), so the mAP evaluator scores exactly as
    ``val`` does; degenerate boxes have zero area and IoU 0."""
    a64 = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b64 = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    # One column per coordinate and plain ufuncs: the tracker calls this on every camera-frame,
    # and broadcasting over (x, y) pairs or prod/clip's Python wrappers cost more than the
    # arithmetic at these sizes.
    ax1, ay1, ax2, ay2 = (a64[:, i, None] for i in range(4))
    bx1, by1, bx2, by2 = b64.T
    iw = np.minimum(ax2, bx2) - np.maximum(ax1, bx1)
    ih = np.minimum(ay2, by2) - np.maximum(ay1, by1)
    inter = np.maximum(iw, 0.0, out=iw) * np.maximum(ih, 0.0, out=ih)
    area_a = np.maximum(ax2 - ax1, 0.0) * np.maximum(ay2 - ay1, 0.0)
    area_b = np.maximum(bx2 - bx1, 0.0) * np.maximum(by2 - by1, 0.0)
    union = area_a + area_b - inter + 1e-7
    iou: npt.NDArray[np.float64] = inter / union
    return iou


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
