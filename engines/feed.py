"""What TensorRT's implicit INT8 calibrator reads: batches in the network input's layout.

The images and their pre-processing belong to ``calib/`` (``calib.feed.ImageFolderFeed``);
the build tools see only this interface, so ``engines`` never imports ``calib``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import numpy.typing as npt

from engines.onnx_info import InputLayout

CalibrationBatch = npt.NDArray[np.uint8] | npt.NDArray[np.float32]


class CalibrationFeed(Protocol):
    """A source of calibration batches."""

    @property
    def name(self) -> str:
        """Where the batches come from, for messages."""
        ...

    def __len__(self) -> int:
        """How many images the feed holds."""
        ...

    def batches(self, layout: InputLayout, shape: tuple[int, ...]) -> Iterator[CalibrationBatch]:
        """Full batches of ``shape`` in ``layout``; a partial last batch is left out."""
        ...
