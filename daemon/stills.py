"""Still-image detection through the daemon's own letterbox, backend and post-processing.

``edgewatch detect`` and the evaluator (calib/, with its own multi-label decoder) both use
this, so what they measure is what the daemon does to a camera frame. With ``rect=True`` each
image instead gets Ultralytics ``predict``'s minimal-padding letterbox (long side to the input
size, short side padded only up to a multiple of the stride), which is how Ultralytics
predicts on a dynamic model; the resize and padding arithmetic is the same ``letterbox_into``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import numpy.typing as npt

from daemon.batch.letterbox import LetterboxGeometry, letterbox_into, rect_shape
from daemon.infer.backend import Backend
from daemon.postprocess.detect import detect_batch
from daemon.postprocess.yolo import Detections

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# Post-processing of one image's head output ``[4 + nc, anchors]`` letterboxed by ``geometry``.
ImageDecoder = Callable[[npt.NDArray[np.float32], LetterboxGeometry], Detections]


class ImageError(ValueError):
    """An input image is missing or cannot be decoded; the message names the file."""


def list_images(inputs: Iterable[Path]) -> list[Path]:
    """Expand files and folders (their images, sorted by name, not recursive) into image paths."""
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {item}")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise ImageError(f"image not found: {item}")
    return paths


def read_image(path: Path) -> npt.NDArray[np.uint8]:
    """Decode ``path`` to a BGR HxWx3 uint8 array, as Ultralytics reads it (bytes -> imdecode)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageError(f"cannot decode image {path} (not an image file, or corrupt)")
    return np.asarray(image, dtype=np.uint8)


class StillDetections(NamedTuple):
    """One image's detections and the letterbox that mapped them back to its pixels."""

    path: Path
    geometry: LetterboxGeometry
    detections: Detections


def detect_images(
    backend: Backend,
    paths: Sequence[Path],
    conf: float,
    iou: float,
    max_det: int = 300,
    *,
    batch_size: int = 1,
    rect: bool = False,
) -> Iterator[tuple[Path, Detections]]:
    """Detect objects in each image as the daemon's batch worker does (on the backend's
    device where it NMSes there), yielding ``(path, detections)`` in input order;
    ``batch_size`` and ``rect`` as for ``decode_images``."""
    for chunk, geometries, batch in _batches(backend, paths, batch_size, rect):
        found = detect_batch(backend, batch, geometries, conf=conf, iou=iou, max_det=max_det)
        yield from zip(chunk, found, strict=True)


def decode_images(
    backend: Backend,
    paths: Sequence[Path],
    decode: ImageDecoder,
    *,
    batch_size: int = 1,
    rect: bool = False,
) -> Iterator[StillDetections]:
    """Letterbox, infer and ``decode`` each image's raw head, yielding results in input order.

    Images are letterboxed into one preallocated batch buffer, ``batch_size`` at a time
    (capped at the backend's ``max_batch``). ``rect`` (one image at a time) uses Ultralytics
    predict's minimal padding where the backend's model has a dynamic input size, else the
    full input size. Raises ``ImageError`` on an unreadable image.
    """
    for chunk, geometries, batch in _batches(backend, paths, batch_size, rect):
        preds = backend.infer(batch)
        # Decode the whole batch before yielding: ``preds`` may be the backend's output buffer,
        # which the caller's next ``infer`` on this thread (another generator) overwrites.
        results = [
            StillDetections(path, geometry, decode(preds[i], geometry))
            for i, (path, geometry) in enumerate(zip(chunk, geometries, strict=True))
        ]
        yield from results


def _batches(
    backend: Backend, paths: Sequence[Path], batch_size: int, rect: bool
) -> Iterator[tuple[Sequence[Path], list[LetterboxGeometry], npt.NDArray[np.uint8]]]:
    """The images letterboxed ``batch_size`` at a time into one reused buffer (see
    ``decode_images``): each chunk's paths, geometries and batch view."""
    rect = rect and backend.dynamic_hw
    size = 1 if rect else max(1, min(batch_size, backend.max_batch))
    h, w = backend.input_hw
    buffer = np.empty((size, h, w, 3), dtype=np.uint8)
    for start in range(0, len(paths), size):
        chunk = paths[start : start + size]
        images = [read_image(p) for p in chunk]
        ch, cw = rect_shape(images[0].shape[:2], (h, w)) if rect else (h, w)
        # A smaller canvas is the front of the same buffer: a contiguous view, no allocation.
        batch = buffer.reshape(-1)[: len(chunk) * ch * cw * 3].reshape(len(chunk), ch, cw, 3)
        geometries = [letterbox_into(image, batch[i]) for i, image in enumerate(images)]
        yield chunk, geometries, batch
