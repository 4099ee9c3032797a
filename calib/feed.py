"""An image folder as TensorRT's calibration feed (``engines.feed.CalibrationFeed``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from calib.images import iter_letterboxed, list_calibration_images, to_network_input
from engines.feed import CalibrationBatch
from engines.onnx_info import InputLayout


class ImageFolderFeed:
    """Letterboxed images of one folder (or dataset root, or ``calib collect`` output), in
    file-name order. Listing raises ``CalibrationDataError`` when there is nothing usable."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._images = list_calibration_images(folder)

    @property
    def name(self) -> str:
        return str(self._folder)

    def __len__(self) -> int:
        return len(self._images)

    def batches(self, layout: InputLayout, shape: tuple[int, ...]) -> Iterator[CalibrationBatch]:
        """Full batches of letterboxed images in the network input's layout; the images of a
        partial last batch are left out (TensorRT calibrates on fixed-shape batches). An
        unreadable image raises ``ImageError``."""
        batch = shape[0]
        hw = (shape[1], shape[2]) if layout is InputLayout.UINT8_NHWC else (shape[2], shape[3])
        # Skipping an unreadable image would shift the rest and leave a partial batch at the end.
        full = self._images[: len(self._images) - len(self._images) % batch]
        for letterboxed in iter_letterboxed(full, hw, batch, skip_unreadable=False):
            if layout is InputLayout.UINT8_NHWC:
                yield letterboxed.images
            else:
                yield to_network_input(letterboxed.images)
