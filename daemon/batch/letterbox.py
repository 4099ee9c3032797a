"""Letterbox a BGR frame into a slot of the preallocated RGB batch buffer.

The geometry is Ultralytics' ``LetterBox(auto=False)`` to the pixel (same rounding, pad
value 114, bilinear resize), so our detections match Ultralytics' own on the same weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

PAD_VALUE = 114
# YOLOv8's largest stride: a rect (minimal-padding) input must be a multiple of it.
STRIDE = 32


@dataclass(frozen=True, slots=True)
class LetterboxGeometry:
    """How a source frame was placed into the network input: enough to map boxes back."""

    scale: float
    pad_left: int
    pad_top: int
    src_width: int
    src_height: int


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a source frame goes in a letterboxed canvas: the geometry and the resized size."""

    geometry: LetterboxGeometry
    new_w: int
    new_h: int


def place(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Placement:
    """Ultralytics' ``LetterBox(auto=False)`` placement of a ``src_hw`` frame in a ``dst_hw``
    canvas: shared by the host letterbox and the device one, so both map boxes back alike."""
    (src_h, src_w), (dst_h, dst_w) = src_hw, dst_hw
    scale = min(dst_h / src_h, dst_w / src_w)
    # At least one pixel, so very thin frames still resize (Ultralytics does the same).
    new_w, new_h = max(round(src_w * scale), 1), max(round(src_h * scale), 1)
    dw, dh = (dst_w - new_w) / 2, (dst_h - new_h) / 2
    # Ultralytics' asymmetric rounding: an odd padding puts the extra pixel bottom/right.
    top, left = round(dh - 0.1), round(dw - 0.1)
    return Placement(LetterboxGeometry(scale, left, top, src_w, src_h), new_w, new_h)


def letterbox_into(
    src_bgr: npt.NDArray[np.uint8], dst_rgb: npt.NDArray[np.uint8]
) -> LetterboxGeometry:
    """Resize ``src_bgr`` (HxWx3) keeping its aspect ratio into ``dst_rgb`` (h x w x 3, written
    in place, RGB) and return the geometry. Only the resized image is allocated."""
    src_h, src_w = src_bgr.shape[:2]
    dst_h, dst_w = dst_rgb.shape[:2]
    placed = place((src_h, src_w), (dst_h, dst_w))
    new_w, new_h = placed.new_w, placed.new_h
    top, left = placed.geometry.pad_top, placed.geometry.pad_left

    inner = dst_rgb[top : top + new_h, left : left + new_w]
    if (new_w, new_h) == (src_w, src_h):
        cv2.cvtColor(src_bgr, cv2.COLOR_BGR2RGB, dst=inner)
    else:
        resized = cv2.resize(src_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=inner)
    # Only the borders need the pad value; the slot may hold a different-sized frame from before.
    if top > 0:
        dst_rgb[:top] = PAD_VALUE
    if top + new_h < dst_h:
        dst_rgb[top + new_h :] = PAD_VALUE
    if left > 0:
        dst_rgb[top : top + new_h, :left] = PAD_VALUE
    if left + new_w < dst_w:
        dst_rgb[top : top + new_h, left + new_w :] = PAD_VALUE
    return placed.geometry


def rect_shape(src_hw: tuple[int, int], input_hw: tuple[int, int]) -> tuple[int, int]:
    """Ultralytics' ``LetterBox(auto=True)`` canvas: the resized image plus the least padding
    that makes each side a multiple of ``STRIDE`` (never larger than ``input_hw``)."""
    placed, (dst_h, dst_w) = place(src_hw, input_hw), input_hw
    new_h, new_w = placed.new_h, placed.new_w
    return new_h + (dst_h - new_h) % STRIDE, new_w + (dst_w - new_w) % STRIDE


def batch_hws(
    frame_hws: Iterable[tuple[int, int]], input_hw: tuple[int, int], dynamic_hw: bool
) -> set[tuple[int, int]]:
    """Every batch (height, width) cameras of these frame sizes can produce: ``input_hw`` for
    a fixed-size model; in rect mode a batch is as large as its largest camera in each
    dimension (``BatchBuffer.assemble``), so any mix of the cameras' rect shapes."""
    if not dynamic_hw:
        return {input_hw}
    shapes = {rect_shape(hw, input_hw) for hw in frame_hws}
    mixed = set(shapes)
    for a in shapes:
        mixed |= {(max(a[0], h), max(a[1], w)) for h, w in mixed}
    return mixed
