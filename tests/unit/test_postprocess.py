"""YOLOv8 head decoding and NMS: Ultralytics semantics (score > conf, class-aware NMS that
suppresses IoU > iou, max_det), and boxes mapped back to frame pixels."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from daemon.batch.letterbox import LetterboxGeometry
from daemon.postprocess.iou import box_iou
from daemon.postprocess.match import Agreement, match
from daemon.postprocess.yolo import Detections, decode_batch, decode_one, nms
from daemon.publish.payloads import detection_records

NC = 3
IDENTITY = LetterboxGeometry(scale=1.0, pad_left=0, pad_top=0, src_width=1000, src_height=1000)


def _head(
    anchors: list[tuple[tuple[float, float, float, float], int, float]],
) -> npt.NDArray[np.float32]:
    """A head output [4 + NC, n]: per anchor an xyxy box (stored as xywh), a class, a score."""
    pred = np.zeros((4 + NC, len(anchors)), dtype=np.float32)
    for i, ((x1, y1, x2, y2), cls, score) in enumerate(anchors):
        pred[:4, i] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        pred[4 + cls, i] = score
    return pred


def test_same_class_overlap_is_suppressed_other_class_kept() -> None:
    pred = _head(
        [
            ((0, 0, 100, 100), 0, 0.9),
            ((5, 5, 105, 105), 0, 0.8),  # IoU ~0.82 with the first, same class: suppressed
            ((5, 5, 105, 105), 1, 0.7),  # same box, other class: kept (class-aware)
        ]
    )
    dets = decode_one(pred, IDENTITY, conf=0.25, iou=0.7)
    assert dets.class_ids.tolist() == [0, 1]
    np.testing.assert_allclose(dets.scores, [0.9, 0.7])
    np.testing.assert_allclose(dets.boxes, [[0, 0, 100, 100], [5, 5, 105, 105]])


def test_iou_boundary_suppresses_only_above_threshold() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=np.float32)  # IoU exactly 0.5
    scores = np.array([0.9, 0.8], dtype=np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]


def test_confidence_is_strictly_greater() -> None:
    pred = _head([((0, 0, 10, 10), 0, 0.25), ((20, 20, 30, 30), 2, 0.2501)])
    dets = decode_one(pred, IDENTITY, conf=0.25, iou=0.7)
    assert dets.class_ids.tolist() == [2]


def test_max_det_keeps_the_best() -> None:
    pred = _head([((i * 20, 0, i * 20 + 10, 10), 0, 0.3 + i * 0.01) for i in range(30)])
    dets = decode_one(pred, IDENTITY, conf=0.25, iou=0.7, max_det=5)
    assert len(dets) == 5
    assert np.all(np.diff(dets.scores) <= 0)
    np.testing.assert_allclose(dets.scores[0], 0.59)


def test_empty_inputs() -> None:
    dets = decode_one(_head([((0, 0, 10, 10), 0, 0.1)]), IDENTITY, conf=0.25, iou=0.7)
    assert len(dets) == 0
    assert dets.boxes.shape == (0, 4)
    assert dets.boxes.dtype == np.float32
    assert dets.class_ids.dtype == np.int64
    assert detection_records(dets, ["a", "b", "c"]) == []
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).size == 0


def test_boxes_map_back_to_frame_pixels_and_clip() -> None:
    # 1280x720 frame in 640x640: scale 0.5, pad_top 140.
    geometry = LetterboxGeometry(scale=0.5, pad_left=0, pad_top=140, src_width=1280, src_height=720)
    pred = _head([((100, 140, 300, 240), 1, 0.9), ((600, 130, 700, 200), 2, 0.8)])
    (dets,) = decode_batch(pred[None], [geometry], conf=0.25, iou=0.7)
    np.testing.assert_allclose(dets.boxes[0], [200, 0, 600, 200])
    np.testing.assert_allclose(dets.boxes[1], [1200, 0, 1280, 120])  # clipped to the frame
    records = detection_records(dets, ["a", "b", "c"])
    assert records[0] == {
        "class_id": 1,
        "name": "b",
        "confidence": 0.9,
        "box": [200.0, 0.0, 600.0, 200.0],
    }


def _dets(rows: list[tuple[float, float, float, float, int]]) -> Detections:
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return Detections(
        arr[:, :4].astype(np.float32), np.ones(len(arr), np.float32), arr[:, 4].astype(np.int64)
    )


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 5], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[0.5, 0.0, 1.0]])


def test_match_is_class_aware_and_one_to_one() -> None:
    ref = _dets([(0, 0, 10, 10, 0), (100, 100, 110, 110, 1), (200, 200, 210, 210, 2)])
    cand = _dets(
        [
            (0, 0, 10, 10, 0),
            (1, 1, 10, 10, 0),  # duplicate: only one may match
            (100, 100, 110, 110, 2),
        ]
    )  # right place, wrong class
    agreement = match(ref, cand, iou=0.5)
    assert agreement == Agreement(matched=1, reference=3, candidate=3)
    assert agreement.f1 == pytest.approx(1 / 3)
    assert match(ref, _dets([]), 0.5).recall == 0.0
    assert match(_dets([]), _dets([]), 0.5).f1 == 1.0
    total = agreement + Agreement(2, 2, 2)
    assert (total.matched, total.reference, total.candidate) == (3, 5, 5)
