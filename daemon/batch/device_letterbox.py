"""Letterbox a batch on a torch device, for frames a camera reader decoded into device memory
(NVDEC): their pixels never cross to the host.

The placement is ``letterbox_into``'s (``place``), the pad value too, and the resampling is
OpenCV's ``INTER_LINEAR`` (bilinear, half-pixel centres, no antialiasing), computed in float32
and rounded, so a pixel differs from the host letterbox only by OpenCV's fixed-point rounding.
Device frames are RGB; a host frame in the same batch (a camera whose reader fell back to
OpenCV) is BGR: it is uploaded once and swapped to RGB on the device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from daemon.batch.letterbox import PAD_VALUE, LetterboxGeometry, place
from daemon.capture.frame import FrameImage

_RGB = 3


class DeviceLetterbox:
    """A device uint8 buffer with room for ``[max_batch, *input_hw, 3]`` and the CUDA stream
    its letterboxing runs on (none on a CPU device); one per ``BatchBuffer``."""

    def __init__(self, max_batch: int, input_hw: tuple[int, int], device: torch.device) -> None:
        self.device = device
        h, w = input_hw
        self._flat = torch.empty(max_batch * h * w * _RGB, dtype=torch.uint8, device=device)
        # Its own stream: the letterboxing of one batch never waits for another thread's
        # inference or letterboxing.
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def letterbox(
        self, images: Sequence[FrameImage], hw: tuple[int, int]
    ) -> tuple[torch.Tensor, tuple[LetterboxGeometry, ...]]:
        """Letterbox ``images`` (device RGB tensors or host BGR arrays, ``HxWx3`` uint8) into a
        ``[n, *hw, 3]`` RGB view of the buffer; returns it and each frame's geometry.

        Returns once the work has finished on the device: the frames may be released (their
        memory reused) and any stream may read the batch."""
        n, (h, w) = len(images), hw
        out = self._flat[: n * h * w * _RGB].view(n, h, w, _RGB)
        if self._stream is None:
            return out, self._fill(out, images)
        # A frame still being written on the caller's stream is complete before it is read.
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(self._stream):
                geometries = self._fill(out, images)
        finally:
            # Also after a failure: the caller releases the frames next.
            self._stream.synchronize()
        return out, geometries

    def _fill(
        self, out: torch.Tensor, images: Sequence[FrameImage]
    ) -> tuple[LetterboxGeometry, ...]:
        hw = (out.shape[1], out.shape[2])
        out.fill_(PAD_VALUE)
        geometries: list[LetterboxGeometry] = []
        for start, end in _runs(images):
            first = images[start]
            placed = place((first.shape[0], first.shape[1]), hw)
            top, left = placed.geometry.pad_top, placed.geometry.pad_left
            run = [self._on_device(image) for image in images[start:end]]
            frames = run[0].unsqueeze(0) if len(run) == 1 else torch.stack(run)
            resized = _resized(frames, placed.new_h, placed.new_w)
            if isinstance(first, np.ndarray):
                resized = resized.flip(-1)  # BGR -> RGB
            out[start:end, top : top + placed.new_h, left : left + placed.new_w].copy_(resized)
            geometries += [placed.geometry] * (end - start)
        return tuple(geometries)

    def _on_device(self, image: FrameImage) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(image)
        return image.to(self.device, non_blocking=True)


def _runs(images: Sequence[FrameImage]) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each run of consecutive frames of one size and one kind (host or
    device): a run shares one placement and one resize call."""
    start = 0
    for i in range(1, len(images) + 1):
        if i == len(images) or not _same_kind(images[start], images[i]):
            yield start, i
            start = i


def _same_kind(a: FrameImage, b: FrameImage) -> bool:
    return isinstance(a, np.ndarray) == isinstance(b, np.ndarray) and tuple(a.shape) == tuple(
        b.shape
    )


def _resized(frames: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``frames`` (``[k, H, W, 3]`` uint8) resized to ``[k, h, w, 3]`` uint8 as OpenCV's
    ``INTER_LINEAR`` does: bilinear with half-pixel centres, no antialiasing."""
    if (frames.shape[1], frames.shape[2]) == (h, w):
        return frames
    # No uint8 bilinear kernel on CUDA; NHWC viewed as NCHW is channels-last, which
    # interpolate keeps, so neither side needs a layout copy.
    x = frames.permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
