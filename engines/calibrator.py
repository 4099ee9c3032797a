"""Legacy implicit INT8 calibration for TensorRT 10 (``IInt8EntropyCalibrator2``).

Deprecated by NVIDIA since TensorRT 10.1 and removed in 11; kept because JetPack 6 ships 10.3
and a float model plus a folder of images is all an operator may have. The preferred INT8 path
is a Q/DQ model from ``edgewatch calibrate``. Imports TensorRT and PyCUDA: load lazily.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt
import pycuda.driver as cuda
import tensorrt as trt

from daemon.batch.letterbox import letterbox_into
from engines.onnx_info import InputLayout

if TYPE_CHECKING:
    from typing_extensions import Buffer

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


def calibration_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted so calibration is reproducible."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def calibration_batches(
    images: list[Path], layout: InputLayout, shape: tuple[int, ...]
) -> Iterator[npt.NDArray[np.uint8] | npt.NDArray[np.float32]]:
    """Full batches of letterboxed images in the network input's layout; a partial last batch
    is dropped (TensorRT calibrates on fixed-shape batches)."""
    batch = shape[0]
    h, w = (shape[1], shape[2]) if layout is InputLayout.UINT8_NHWC else (shape[2], shape[3])
    buffer = np.empty((batch, h, w, 3), np.uint8)
    for start in range(0, len(images) - batch + 1, batch):
        for slot, path in enumerate(images[start : start + batch]):
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                raise ValueError(f"calibration image {path} cannot be read")
            letterbox_into(np.asarray(frame, np.uint8), buffer[slot])
        if layout is InputLayout.UINT8_NHWC:
            yield buffer
        else:
            yield np.ascontiguousarray(buffer.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
    """Feeds letterboxed calibration images; reuses a calibration cache file when present.

    TensorRT calls it from the building thread, in which the CUDA context is current.
    """

    def __init__(
        self, folder: Path, layout: InputLayout, shape: tuple[int, ...], cache: Path | None
    ) -> None:
        trt.IInt8EntropyCalibrator2.__init__(self)
        images = calibration_images(folder)
        if len(images) < shape[0]:
            raise ValueError(f"{folder} holds {len(images)} images, at least {shape[0]} needed")
        self._batches = calibration_batches(images, layout, shape)
        self._batch_size = shape[0]
        self._cache = cache
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
        if self._cache is not None and self._cache.is_file():
            log.info("reusing INT8 calibration cache", extra={"cache": str(self._cache)})
            return self._cache.read_bytes()
        return None

    def write_calibration_cache(self, cache: Buffer) -> None:
        if self._cache is not None:
            self._cache.parent.mkdir(parents=True, exist_ok=True)
            self._cache.write_bytes(bytes(cache))
