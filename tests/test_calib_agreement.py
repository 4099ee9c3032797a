"""Label-free agreement F1 between two detection sets."""

from __future__ import annotations

import numpy as np
import pytest

from calib.agreement import AgreementCounts, agreement
from daemon.postprocess.yolo import Detections


def _det(boxes: list[list[float]], classes: list[int]) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4),
                      np.linspace(0.9, 0.5, len(classes)).astype(np.float32),
                      np.array(classes, np.int64))


def test_identical_sets_agree_fully() -> None:
    ref = _det([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 2])
    counts = agreement(ref, ref)
    assert counts == AgreementCounts(2, 0, 0)
    assert counts.f1 == 1.0


def test_class_shift_and_iou_below_half_do_not_match() -> None:
    ref = _det([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 2])
    cand = _det([[0, 0, 10, 10], [30, 20, 50, 40], [100, 100, 120, 120]], [1, 2, 5])
    counts = agreement(cand, ref)  # IoU of the second pair is 1/3
    assert counts == AgreementCounts(0, 3, 2)
    assert counts.f1 == 0.0


def test_partial_agreement_f1_and_sums() -> None:
    ref = _det([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 2])
    cand = _det([[0, 0, 10, 11]], [0])
    counts = agreement(cand, ref) + agreement(_det([], []), _det([], []))
    assert counts == AgreementCounts(1, 0, 1)
    assert counts.f1 == pytest.approx(2 / 3)
    assert counts.precision == 1.0
    assert counts.recall == 0.5
    assert AgreementCounts().f1 == 1.0
