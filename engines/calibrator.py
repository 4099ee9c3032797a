"""Legacy implicit INT8 calibration for TensorRT 10 (``IInt8EntropyCalibrator2``).

Deprecated by NVIDIA since TensorRT 10.1 and removed in 11; kept because JetPack 6 ships 10.3
and a float model plus a folder of images is all an operator may have. The preferred INT8 path
is a Q/DQ model from ``edgewatch calibrate``. Imports TensorRT and PyCUDA: load lazily.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pycuda.driver as cuda
import tensorrt as trt

from calib.images import (
    CalibrationImage,
    iter_letterboxed,
    list_calibration_images,
    to_network_input,
)
from engines.cache import atomic_write, pack_calibration_cache, unpack_calibration_cache
from engines.onnx_info import InputLayout

if TYPE_CHECKING:
    from typing_extensions import Buffer

log = logging.getLogger(__name__)


def calibration_batches(
    images: Sequence[CalibrationImage], layout: InputLayout, shape: tuple[int, ...]
) -> Iterator[npt.NDArray[np.uint8] | npt.NDArray[np.float32]]:
    """Full batches of letterboxed images in the network input's layout; the images of a
    partial last batch are left out (TensorRT calibrates on fixed-shape batches). An unreadable
    image raises ``ImageError``."""
    batch = shape[0]
    hw = (shape[1], shape[2]) if layout is InputLayout.UINT8_NHWC else (shape[2], shape[3])
    # Skipping an unreadable image would shift the rest and leave a partial batch at the end.
    full = images[: len(images) - len(images) % batch]
    for letterboxed in iter_letterboxed(full, hw, batch, skip_unreadable=False):
        if layout is InputLayout.UINT8_NHWC:
            yield letterboxed.images
        else:
            yield to_network_input(letterboxed.images)


class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
    """Feeds letterboxed calibration images; reuses a calibration cache file when it was
    written for the same model (``model_sha256``).

    TensorRT calls it from the building thread, in which the CUDA context is current.
    """

    def __init__(
        self,
        folder: Path,
        layout: InputLayout,
        shape: tuple[int, ...],
        cache: Path | None,
        model_sha256: str,
    ) -> None:
        trt.IInt8EntropyCalibrator2.__init__(self)
        images = list_calibration_images(folder)
        if len(images) < shape[0]:
            raise ValueError(f"{folder} holds {len(images)} images, at least {shape[0]} needed")
        self._batches = calibration_batches(images, layout, shape)
        self._batch_size = shape[0]
        self._cache = cache
        self._model_sha256 = model_sha256
        dtype = np.uint8 if layout is InputLayout.UINT8_NHWC else np.float32
        self._device = cuda.mem_alloc(int(np.prod(shape)) * np.dtype(dtype).itemsize)
        log.info("INT8 calibration", extra={"images": len(images), "batch": shape[0]})

    def get_batch_size(self) -> int:
        return self._batch_size

    # TensorRT's protocol: a list of device pointers, or None when the data is exhausted.
    def get_batch(self, names: list[str]) -> list[int] | None:  # type: ignore[override]
        batch = next(self._batches, None)
        if batch is None:
            return None
        cuda.memcpy_htod(self._device, np.ascontiguousarray(batch))
        return [int(self._device)]

    def read_calibration_cache(self) -> bytes | None:
        if self._cache is None or not self._cache.is_file():
            return None
        table = unpack_calibration_cache(self._model_sha256, self._cache.read_bytes())
        if table is None:
            log.warning(
                "INT8 calibration cache is for another model; calibrating anew",
                extra={"cache": str(self._cache)},
            )
            return None
        log.info("reusing INT8 calibration cache", extra={"cache": str(self._cache)})
        return table

    def write_calibration_cache(self, cache: Buffer) -> None:
        if self._cache is not None:
            atomic_write(self._cache, pack_calibration_cache(self._model_sha256, bytes(cache)))
