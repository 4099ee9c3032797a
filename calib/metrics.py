"""COCO-style detection metrics, numerically the algorithm of Ultralytics ``val``.

Reimplemented in numpy so ``edgewatch evaluate`` needs no PyTorch: greedy per-threshold
matching at the ten IoU thresholds 0.50:0.95 (``DetectionValidator.match_predictions``),
per-class precision/recall curves (``ap_per_class``) and the 101-point interpolated AP
over the precision envelope (``compute_ap``, method ``interp``). Matching Ultralytics to
the letter is the point: a different tie-break or interpolation moves mAP by more than
the 0.005 we promise to agree within.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from daemon.postprocess.iou import box_iou

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

IOU_THRESHOLDS: FloatArray = np.linspace(0.5, 0.95, 10)
_EPS = 1e-16


def match_predictions(
    pred_classes: npt.NDArray[np.integer],
    true_classes: npt.NDArray[np.integer],
    iou: FloatArray,
    thresholds: FloatArray = IOU_THRESHOLDS,
) -> BoolArray:
    """Which predictions are true positives at each IoU threshold: ``[n_pred, n_thresholds]``.

    ``iou`` is ``[n_true, n_pred]``. At each threshold every (label, prediction) pair of the
    same class with IoU >= threshold is a candidate; each prediction keeps its best-IoU label,
    then each label goes to the first of its candidates in prediction order (Ultralytics'
    ``np.unique`` trick: predictions arrive sorted by confidence, so the most confident
    overlapping prediction wins, as in COCO), each used at most once.
    """
    correct = np.zeros((pred_classes.shape[0], thresholds.shape[0]), dtype=bool)
    if pred_classes.shape[0] == 0 or true_classes.shape[0] == 0:
        return correct
    same_class = true_classes[:, None] == pred_classes[None, :]
    iou = iou * same_class
    for t, threshold in enumerate(thresholds):
        matches = np.argwhere(iou >= threshold)
        if matches.shape[0] == 0:
            continue
        if matches.shape[0] > 1:
            matches = matches[iou[matches[:, 0], matches[:, 1]].argsort()[::-1]]
            matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
            matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
        correct[matches[:, 1], t] = True
    return correct


def compute_ap(recall: FloatArray, precision: FloatArray) -> float:
    """AP of one class at one threshold: 101-point interpolation of the precision envelope.

    As in Ultralytics 8.3+/8.4, precision drops to 0 right after the last recall reached
    (the extra ``(recall[-1], 0)`` sentinel) instead of sloping linearly to (1, 0): on
    coco_eval that is 0.002 mAP50-95, half our agreement budget.
    """
    last = recall[-1] if len(recall) else 1.0
    mrec = np.concatenate(([0.0], recall, [last], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return float(np.trapezoid(np.interp(x, mrec, mpre), x))


@dataclass(frozen=True)
class ApResult:
    """Per-class AP at every IoU threshold, for the classes present in the labels."""

    classes: IntArray
    ap: FloatArray  # [n_classes, n_thresholds]

    @property
    def map50_95(self) -> float:
        return float(self.ap.mean()) if self.ap.size else 0.0

    @property
    def map50(self) -> float:
        return float(self.ap[:, 0].mean()) if self.ap.size else 0.0


def ap_per_class(
    tp: BoolArray,
    conf: npt.NDArray[np.floating],
    pred_cls: npt.NDArray[np.integer],
    target_cls: npt.NDArray[np.integer],
) -> ApResult:
    """AP per labelled class (Ultralytics ``ap_per_class``); predicted classes absent from the
    labels are ignored, labelled classes never predicted score 0."""
    order = np.argsort(-conf)
    tp, pred_cls = tp[order], pred_cls[order]
    classes, n_labels = np.unique(target_cls, return_counts=True)
    ap = np.zeros((classes.shape[0], tp.shape[1]))
    for ci, c in enumerate(classes):
        mine = pred_cls == c
        if not mine.any():
            continue
        tpc = tp[mine].cumsum(axis=0)
        fpc = (1 - tp[mine]).cumsum(axis=0)
        recall = tpc / (n_labels[ci] + _EPS)
        precision = tpc / (tpc + fpc)
        for t in range(tp.shape[1]):
            ap[ci, t] = compute_ap(recall[:, t], precision[:, t])
    return ApResult(classes.astype(np.int64), ap)


@dataclass
class DetectionStats:
    """Accumulates per-image matching results; ``result()`` gives the dataset's AP."""

    _tp: list[BoolArray] = field(default_factory=list)
    _conf: list[FloatArray] = field(default_factory=list)
    _pred_cls: list[IntArray] = field(default_factory=list)
    _target_cls: list[IntArray] = field(default_factory=list)
    images: int = 0

    def add(
        self,
        pred_boxes: npt.NDArray[np.floating],
        pred_scores: npt.NDArray[np.floating],
        pred_classes: npt.NDArray[np.integer],
        true_boxes: npt.NDArray[np.floating],
        true_classes: npt.NDArray[np.integer],
    ) -> None:
        """Add one image: predictions and labels as xyxy boxes in the same pixel space."""
        pred_c = np.asarray(pred_classes, dtype=np.int64)
        true_c = np.asarray(true_classes, dtype=np.int64)
        iou = box_iou(true_boxes, pred_boxes)
        self._tp.append(match_predictions(pred_c, true_c, iou))
        self._conf.append(np.asarray(pred_scores, dtype=np.float64))
        self._pred_cls.append(pred_c)
        self._target_cls.append(true_c)
        self.images += 1

    def result(self) -> ApResult:
        n_t = IOU_THRESHOLDS.shape[0]
        tp = np.concatenate(self._tp) if self._tp else np.zeros((0, n_t), dtype=bool)
        conf = np.concatenate(self._conf) if self._conf else np.zeros(0)
        pred = np.concatenate(self._pred_cls) if self._pred_cls else np.zeros(0, np.int64)
        target = np.concatenate(self._target_cls) if self._target_cls else np.zeros(0, np.int64)
        return ap_per_class(tp, conf, pred, target)
