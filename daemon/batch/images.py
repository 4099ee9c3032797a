"""What a batch's images are: host arrays, or tensors on a torch device.

A reader decoding on the GPU (NVDEC) hands out RGB ``torch.Tensor`` frames, any other reader
BGR numpy arrays (``daemon.capture.frame.FrameImage``); a batch holding a device frame is
letterboxed on that device. torch is imported only where a device frame appears, so a
host-only install never needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

# Letterboxed RGB images (``[n, H, W, 3]`` uint8), or a region of them: on the host, or on
# the device of the batch's device frames.
BatchImages: TypeAlias = "npt.NDArray[np.uint8] | torch.Tensor"


def host_copy(images: BatchImages) -> npt.NDArray[np.uint8]:
    """A host copy of ``images`` (any slice of a batch): from a device, only it is downloaded."""
    if isinstance(images, np.ndarray):
        return images.copy()
    # copy=True: a tensor already on the CPU would otherwise come back as a view.
    copied: npt.NDArray[np.uint8] = images.to("cpu", copy=True).numpy()
    return copied
