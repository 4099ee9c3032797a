"""The evaluator's metric math (Ultralytics' algorithm) on hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest

from calib.metrics import DetectionStats, compute_ap, match_predictions
from daemon.postprocess.iou import box_iou

BOX = np.array([[10.0, 10.0, 110.0, 110.0]])


def _stats(
    pred: np.ndarray, scores: list[float], pcls: list[int], truth: np.ndarray, tcls: list[int]
) -> DetectionStats:
    stats = DetectionStats()
    stats.add(pred, np.array(scores), np.array(pcls), truth, np.array(tcls))
    return stats


# Ultralytics 8.4 appends a (recall[-1], 0) sentinel, so precision falls to 0 at recall 1
# itself and the last 1/100 trapezoid is half lost: a perfect detector scores 0.995.
PERFECT = 0.995


def test_perfect_predictions_score_the_maximum() -> None:
    truth = np.array([[0, 0, 50, 50], [100, 100, 200, 180], [10, 300, 90, 400]], float)
    result = _stats(truth.copy(), [0.9, 0.8, 0.7], [0, 1, 1], truth, [0, 1, 1]).result()
    assert result.map50_95 == pytest.approx(PERFECT)
    assert result.map50 == pytest.approx(PERFECT)


def test_shifted_box_counts_only_at_thresholds_up_to_its_iou() -> None:
    shifted = BOX + np.array([[20.0, 0.0, 20.0, 0.0]])  # IoU = 80*100 / (120*100) = 0.667
    assert box_iou(BOX, shifted)[0, 0] == pytest.approx(80 / 120, abs=1e-6)
    result = _stats(shifted, [0.9], [3], BOX, [3]).result()
    # Thresholds 0.50, 0.55, 0.60, 0.65 pass; 0.70..0.95 fail.
    assert result.ap[0, :4] == pytest.approx([PERFECT] * 4)
    assert result.ap[0, 4:] == pytest.approx([0.0] * 6)
    assert result.map50_95 == pytest.approx(0.4 * PERFECT)


def test_wrong_class_never_matches() -> None:
    result = _stats(BOX.copy(), [0.9], [1], BOX, [2]).result()
    assert result.map50_95 == 0.0
    assert list(result.classes) == [2]


def test_image_without_labels_adds_false_positives_only() -> None:
    stats = _stats(BOX.copy(), [0.9], [0], BOX, [0])
    stats.add(BOX.copy(), np.array([0.95]), np.array([0]), np.zeros((0, 4)), np.zeros(0, np.int64))
    result = stats.result()
    # The FP ranks first: precision 0 then 0.5 at recall 1 -> envelope 0.5 up to recall 1.
    assert result.map50 == pytest.approx(0.5 * PERFECT)


def test_no_predictions_at_all_scores_zero() -> None:
    stats = DetectionStats()
    stats.add(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), BOX, np.array([0]))
    assert stats.result().map50_95 == 0.0


def test_compute_ap_101_point_interpolation() -> None:
    # Precision 1 up to recall 0.5, then 0: 101-point trapezoid = 0.5 minus half a step.
    assert compute_ap(np.array([0.5]), np.array([1.0])) == pytest.approx(0.495)
    # The precision envelope lifts the early dip to the later, higher precision.
    dip = compute_ap(np.array([0.25, 0.5]), np.array([0.5, 1.0]))
    assert dip == pytest.approx(0.495)
    # Sampled on the 101-point grid and trapezoid-integrated, not the exact area of 1/3.
    assert compute_ap(np.array([1 / 3]), np.array([1.0])) == pytest.approx(0.335)


def test_match_predictions_first_prediction_wins_one_to_one() -> None:
    truth = np.array([[0, 0, 100, 100]], float)
    preds = np.array([[0, 0, 100, 88], [0, 0, 100, 100]], float)  # IoU 0.88 and 1.0
    tp = match_predictions(np.array([0, 0]), np.array([0]), box_iou(truth, preds))
    # Up to 0.85 both qualify and the first (most confident) takes the label; above, only
    # the exact box does. Never both at one threshold.
    assert list(tp[0]) == [True] * 8 + [False] * 2
    assert list(tp[1]) == [False] * 8 + [True] * 2
