"""What every captured frame carries with it through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

# A frame's pixels: HxWx3 uint8 BGR in host memory (an OpenCV reader's numpy array), or
# HxWx3 uint8 RGB in CUDA memory (an NVDEC reader's torch tensor).
FrameImage: TypeAlias = "npt.NDArray[np.uint8] | torch.Tensor"


@dataclass(frozen=True, slots=True)
class FrameMeta:
    camera_id: str
    seq: int
    # Wall-clock seconds (time.time()) when the frame was read from the source.
    capture_ts: float
    width: int
    height: int
