"""Intersection over union of xyxy boxes: one formula for the evaluator, the agreement
check and NMS. The tracker computes it pair by pair in compiled code
(``daemon.track.bytetrack``), step for step the same; a test holds the two equal."""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

# Added to every IoU's union (Ultralytics' value): boxes of zero area get IoU 0, not 0/0.
IOU_EPS: Final = 1e-7


def box_iou(
    a: npt.NDArray[np.floating[Any]], b: npt.NDArray[np.floating[Any]]
) -> npt.NDArray[np.float64]:
    """Pairwise IoU of xyxy boxes ``a`` [n, 4] and ``b`` [m, 4] -> [n, m], in float64.

    Ultralytics' formula, so the mAP evaluator scores exactly as ``val`` does; degenerate
    boxes have zero area and IoU 0."""
    a64 = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b64 = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return pairwise_iou(a64, b64)


def pairwise_iou(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``box_iou`` for float64 rows as they are.

    x and y go through each ufunc together, which halves the calls that dominate at tens of
    boxes; contiguous coordinate rows, since broadcasting strided views costs more than the
    copies."""
    return corner_iou(np.ascontiguousarray(a.T)[:, :, None], np.ascontiguousarray(b.T)[:, None, :])


def corner_iou(
    corners_a: npt.NDArray[np.float64], corners_b: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """The IoU of float64 boxes given coordinate-first, ``[x1, y1, x2, y2, ...]`` with the
    boxes on the remaining axes, which broadcast against each other: equal shapes pair box
    by box, ``[4, n, 1]`` and ``[4, 1, m]`` give every pair (``pairwise_iou``). One formula
    for both, so a pair gets the same value either way."""
    extent = np.minimum(corners_a[2:], corners_b[2:])
    extent -= np.maximum(corners_a[:2], corners_b[:2])
    np.maximum(extent, 0.0, out=extent)
    inter = extent[0] * extent[1]
    size_a = np.maximum(corners_a[2:] - corners_a[:2], 0.0)
    size_b = np.maximum(corners_b[2:] - corners_b[:2], 0.0)
    union = size_a[0] * size_a[1] + size_b[0] * size_b[1]
    union -= inter
    union += IOU_EPS
    iou: npt.NDArray[np.float64] = np.divide(inter, union, out=inter)
    return iou
