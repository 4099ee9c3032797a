"""Label-free agreement (``daemon.postprocess.match``) on hand-built detection sets: the one
matcher behind the drift check, ``evaluate --reference`` and the detect/TensorRT suites."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.postprocess.iou import box_iou
from daemon.postprocess.match import Agreement, match
from daemon.postprocess.yolo import Detections


def _det(boxes: list[list[float]], classes: list[int]) -> Detections:
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.linspace(0.9, 0.5, len(classes)).astype(np.float32),
        np.array(classes, np.int64),
    )


def test_identical_sets_agree_fully() -> None:
    ref = _det([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 2])
    counts = match(ref, ref)
    assert counts == Agreement(matched=2, reference=2, candidate=2)
    assert counts.f1 == 1.0


def test_class_shift_and_iou_below_half_do_not_match() -> None:
    ref = _det([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 2])
    cand = _det([[0, 0, 10, 10], [30, 20, 50, 40], [100, 100, 120, 120]], [1, 2, 5])
    counts = match(ref, cand)  # IoU of the second pair is 1/3
    assert counts == Agreement(matched=0, reference=2, candidate=3)
    assert counts.f1 == 0.0


def test_partial_agreement_f1_and_sums() -> None:
    ref = _det([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 2])
    cand = _det([[0, 0, 10, 11]], [0])
    counts = match(ref, cand) + match(_det([], []), _det([], []))
    assert counts == Agreement(matched=1, reference=2, candidate=1)
    assert counts.f1 == pytest.approx(2 / 3)
    assert counts.precision == 1.0
    assert counts.recall == 0.5
    assert Agreement().f1 == 1.0


def test_each_box_matches_once_best_iou_first() -> None:
    ref = _det([[0, 0, 10, 10]], [0])
    cand = _det([[0, 0, 10, 12], [0, 0, 10, 10]], [0, 0])  # the exact copy wins
    assert match(ref, cand) == Agreement(matched=1, reference=1, candidate=2)


def test_box_iou_of_degenerate_boxes_is_zero() -> None:
    iou = box_iou(np.array([[5, 5, 5, 5]], np.float32), np.array([[5, 5, 5, 5], [0, 0, 9, 9]]))
    np.testing.assert_array_equal(iou, [[0.0, 0.0]])
