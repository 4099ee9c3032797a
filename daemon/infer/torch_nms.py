"""YOLOv8 decode, score filter and class-aware NMS on the torch backend's device.

The same steps as ``daemon.postprocess.yolo.decode_one`` (each anchor's best class, score >
``conf``, at most ``_MAX_NMS`` candidates per image, greedy NMS per class, ``max_det`` per
image) on the whole batch at once, with torchvision's NMS kernel, which is what Ultralytics'
own ``non_max_suppression`` calls. Only the kept rows are copied to the host: a few
kilobytes instead of the head (``[16, 84, 5040]`` float32 is 27 MB a batch).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import torch
import torchvision

from daemon.infer.backend import FloatArray

_BOX_COORDS: Final = 4
# Ultralytics' cap on the candidates per image that enter NMS.
_MAX_NMS: Final = 30000


def kept_on_device(
    head: torch.Tensor, conf: float, iou: float, max_det: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """NMS of ``head`` (``[n, 4 + nc, anchors]`` float32, xywh in input pixels) on its
    device: the kept rows (``x1, y1, x2, y2, score, class``) of all images, grouped by image
    and best first within each, and each image's row count (``rows_to_host`` splits them)."""
    n, channels, _ = head.shape
    num_classes = channels - _BOX_COORDS
    scores, classes = head[:, _BOX_COORDS:].max(dim=1)
    image, anchor = torch.nonzero(scores > conf, as_tuple=True)
    score = scores[image, anchor]
    # Only a batch with more candidates than the cap can have an image over it: the common
    # case skips the count and its device sync.
    if image.numel() > _MAX_NMS and int(torch.bincount(image).max()) > _MAX_NMS:
        image, anchor, score = _cap_per_image(image, anchor, score, _MAX_NMS)
    # Advanced indices around a slice put the candidate axis first: [k, 4].
    xywh = head[image, :_BOX_COORDS, anchor]
    half = xywh[:, 2:] / 2
    boxes = torch.cat([xywh[:, :2] - half, xywh[:, :2] + half], dim=1)
    label = classes[image, anchor]
    keep = _class_aware_nms(boxes, score, image * num_classes + label, iou)
    # torchvision orders the kept boxes by score over the whole batch: regroup them by image,
    # best first within each, and cut each image at ``max_det``.
    keep = keep[torch.sort(image[keep], stable=True).indices]
    rank, per_image = _rank_in_group(image[keep], n)
    keep = keep[rank < max_det]
    rows = torch.cat([boxes[keep], score[keep, None], label[keep, None].to(boxes.dtype)], dim=1)
    return rows, per_image.clamp(max=max_det)


def rows_to_host(rows: torch.Tensor, sizes: torch.Tensor) -> list[FloatArray]:
    """``kept_on_device``'s result copied to the host: per image its rows, as float32."""
    host = rows.cpu().numpy()
    return np.split(host, np.cumsum(sizes.cpu().numpy())[:-1])


def _rank_in_group(grouped: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For ids sorted into runs (``grouped``), each element's position within its run, and
    the length of every run ``0 .. groups - 1``."""
    counts = torch.bincount(grouped, minlength=groups)
    first = torch.cumsum(counts, 0) - counts
    return torch.arange(grouped.numel(), device=grouped.device) - first[grouped], counts


def _cap_per_image(
    image: torch.Tensor, anchor: torch.Tensor, score: torch.Tensor, cap: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``cap`` best-scoring candidates of each image (Ultralytics' ``max_nms``)."""
    order = torch.sort(score, descending=True, stable=True).indices
    order = order[torch.sort(image[order], stable=True).indices]
    rank, _ = _rank_in_group(image[order], int(image.max()) + 1)
    order = order[rank < cap]
    return image[order], anchor[order], score[order]


def _class_aware_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float
) -> torch.Tensor:
    """Greedy NMS within each group (image x class) in one kernel call: each group's boxes
    are moved apart by more than the span of all coordinates. In float64, because at a batch
    of 64 images float32 offsets would round coordinates by a quarter pixel."""
    if not boxes.numel():
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    wide = boxes.to(torch.float64)
    wide += (groups.to(torch.float64) * (wide.max() - wide.min() + 1))[:, None]
    keep: torch.Tensor = torchvision.ops.nms(wide, scores.to(torch.float64), iou)
    return keep
