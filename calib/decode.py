"""Multi-label decoding for mAP evaluation, built on the daemon's own decoder.

Ultralytics ``val`` runs NMS with ``multi_label=True``: every (anchor, class) pair whose score
passes ``conf`` is a candidate, not only each anchor's best class. On coco_eval that is worth
+0.004 mAP50-95 (0.406 -> 0.410 for yolov8n), too much for our 0.005 agreement budget, so the
evaluator does the same. Only the candidate selection differs from the daemon: NMS, caps and
box mapping are the daemon's own ``decode_candidates``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from daemon.batch.letterbox import LetterboxGeometry
from daemon.postprocess.yolo import Detections, decode_candidates


def decode_multi_label(
    pred: npt.NDArray[np.float32],
    geometry: LetterboxGeometry,
    conf: float,
    iou: float,
    max_det: int = 300,
) -> Detections:
    """Decode one image's head output ``[4 + nc, anchors]`` with one candidate per passing
    (anchor, class) pair; otherwise identical to ``decode_one``."""
    class_scores = pred[4:]
    cls, anchors = np.nonzero(class_scores > conf)
    return decode_candidates(
        pred[:4],
        anchors,
        class_scores[cls, anchors],
        cls,
        geometry=geometry,
        iou=iou,
        max_det=max_det,
    )
