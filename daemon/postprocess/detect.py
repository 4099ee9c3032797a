"""One batch in, one ``Detections`` per frame out, wherever the backend can do the work.

A ``DeviceNms`` backend (the torch backend) decodes and NMSes next to the head, so only the
kept boxes reach the host; any other backend's raw head is decoded here in numpy. Both give
``decode_one``'s semantics. The two steps are separate so the pipeline can time them.

A batch letterboxed on a device (from NVDEC frames) goes to a backend that takes device input
(``DeviceInput``), so its pixels never leave the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from daemon.batch.images import BatchImages
from daemon.batch.letterbox import LetterboxGeometry
from daemon.infer.backend import Backend, BackendError, DeviceInput, DeviceNms, FloatArray
from daemon.postprocess.yolo import Detections, decode_batch, decode_kept

# The raw head ``[n, 4 + nc, anchors]``, or a ``DeviceNms`` backend's kept rows per image.
Inferred = FloatArray | list[FloatArray]


def infer_batch(
    backend: Backend, images: BatchImages, conf: float, iou: float, max_det: int
) -> Inferred:
    """Run ``images`` (``[n, H, W, 3]`` uint8 RGB, on the host or a device), with NMS on the
    backend's device if it can. A device batch needs a ``DeviceInput`` backend.

    The result may be a view of the backend's output buffer: decode it before this thread
    infers again (``Backend`` contract)."""
    if not isinstance(images, np.ndarray):
        if not isinstance(backend, DeviceInput):
            raise BackendError(
                f"the batch is in device memory (GPU-decoded frames) but the {backend.name} "
                "backend takes host batches only; use the torch backend with GPU decoding"
            )
        return backend.infer_nms_device(images, conf, iou, max_det)
    if isinstance(backend, DeviceNms):
        return backend.infer_nms(images, conf, iou, max_det)
    return backend.infer(images)


def decode_inferred(
    inferred: Inferred,
    geometries: Sequence[LetterboxGeometry],
    conf: float,
    iou: float,
    max_det: int,
) -> list[Detections]:
    """``infer_batch``'s result as one ``Detections`` per geometry, in frame pixels."""
    if isinstance(inferred, list):
        return [decode_kept(rows, g) for rows, g in zip(inferred, geometries, strict=True)]
    return decode_batch(inferred, geometries, conf, iou, max_det)


def detect_batch(
    backend: Backend,
    images: BatchImages,
    geometries: Sequence[LetterboxGeometry],
    *,
    conf: float,
    iou: float,
    max_det: int,
) -> list[Detections]:
    """``infer_batch`` then ``decode_inferred``."""
    inferred = infer_batch(backend, images, conf, iou, max_det)
    return decode_inferred(inferred, geometries, conf, iou, max_det)
