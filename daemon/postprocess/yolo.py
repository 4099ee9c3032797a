"""Decode the YOLOv8 head, filter by confidence, class-aware NMS, map boxes to frame pixels.

Vectorised numpy throughout; the only Python loop is NMS's greedy pass over kept boxes.
Semantics follow Ultralytics ``non_max_suppression`` (score > conf, class offset trick,
``max_nms`` pre-sort cap, ``max_det`` cap) so results match Ultralytics' predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from daemon.batch.letterbox import LetterboxGeometry
from daemon.postprocess.iou import IOU_EPS

# Offset per class id for class-aware NMS in one pass (Ultralytics' max_wh).
_MAX_WH = 7680.0
_MAX_NMS = 30000


@dataclass(frozen=True, slots=True)
class Detections:
    """Detections of one frame, as parallel arrays: ``boxes`` xyxy in source-frame pixels."""

    boxes: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]
    class_ids: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, mask: npt.NDArray[np.bool_]) -> Detections:
        return Detections(self.boxes[mask], self.scores[mask], self.class_ids[mask])


def nms(
    boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], iou: float
) -> npt.NDArray[np.intp]:
    """Greedy NMS; returns kept indices in descending score order. Suppresses IoU > ``iou``."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter + IOU_EPS)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.intp)


def decode_one(
    pred: npt.NDArray[np.float32],
    geometry: LetterboxGeometry,
    conf: float,
    iou: float,
    max_det: int = 300,
) -> Detections:
    """Post-process one image's head output ``[4 + nc, anchors]`` (xywh in input pixels)."""
    class_scores = pred[4:]
    best_cls = class_scores.argmax(axis=0)
    best = class_scores[best_cls, np.arange(class_scores.shape[1])]
    anchors = np.flatnonzero(best > conf)
    return decode_candidates(
        pred[:4],
        anchors,
        best[anchors],
        best_cls[anchors],
        geometry=geometry,
        iou=iou,
        max_det=max_det,
    )


def decode_candidates(
    xywh: npt.NDArray[np.float32],
    anchors: npt.NDArray[np.intp],
    scores: npt.NDArray[np.float32],
    class_ids: npt.NDArray[np.intp],
    *,
    geometry: LetterboxGeometry,
    iou: float,
    max_det: int = 300,
) -> Detections:
    """Class-aware NMS of candidate (anchor, class, score) triples and boxes mapped back to
    frame pixels. ``xywh`` is the head's ``[4, anchors]`` box rows. ``decode_one`` passes each
    anchor's best class; the mAP evaluator passes every passing (anchor, class) pair."""
    if anchors.size > _MAX_NMS:
        top = np.argsort(-scores, kind="stable")[:_MAX_NMS]
        anchors, scores, class_ids = anchors[top], scores[top], class_ids[top]
    if anchors.size == 0:
        return _empty()

    centers = xywh[:, anchors].T
    boxes = np.empty_like(centers)
    half_wh = centers[:, 2:] / 2
    boxes[:, :2] = centers[:, :2] - half_wh
    boxes[:, 2:] = centers[:, :2] + half_wh
    scores = scores.astype(np.float32, copy=False)
    cls = class_ids.astype(np.int64)

    keep = nms(boxes + (cls[:, None] * _MAX_WH).astype(np.float32), scores, iou)[:max_det]
    return Detections(_to_frame(boxes[keep], geometry), scores[keep], cls[keep])


def decode_kept(rows: npt.NDArray[np.float32], geometry: LetterboxGeometry) -> Detections:
    """Detections from a ``DeviceNms`` backend's kept rows (``[k, 6]``: xyxy in input
    pixels, score, class id), boxes mapped back to frame pixels."""
    return Detections(
        _to_frame(rows[:, :4].copy(), geometry),
        np.ascontiguousarray(rows[:, 4]),
        rows[:, 5].astype(np.int64),
    )


def _to_frame(
    boxes: npt.NDArray[np.float32], geometry: LetterboxGeometry
) -> npt.NDArray[np.float32]:
    """Input-pixel xyxy ``boxes`` (changed in place) in source-frame pixels, clipped to it."""
    boxes[:, [0, 2]] -= geometry.pad_left
    boxes[:, [1, 3]] -= geometry.pad_top
    boxes /= geometry.scale
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, geometry.src_width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, geometry.src_height)
    return boxes.astype(np.float32, copy=False)


def decode_batch(
    preds: npt.NDArray[np.float32],
    geometries: Sequence[LetterboxGeometry],
    conf: float,
    iou: float,
    max_det: int = 300,
) -> list[Detections]:
    """Post-process a batch ``[n, 4 + nc, anchors]``; one ``Detections`` per geometry."""
    return [decode_one(preds[i], g, conf, iou, max_det) for i, g in enumerate(geometries)]


def _empty() -> Detections:
    return Detections(
        np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    )
