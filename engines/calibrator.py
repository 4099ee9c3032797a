"""Legacy implicit INT8 calibration for TensorRT 10 (``IInt8EntropyCalibrator2``).

Deprecated by NVIDIA since TensorRT 10.1 and removed in 11; kept because JetPack 6 ships 10.3
and a float model plus a folder of images is all an operator may have. The preferred INT8 path
is a Q/DQ model from ``edgewatch calibrate``. Imports TensorRT and PyCUDA: load lazily.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pycuda.driver as cuda
import tensorrt as trt

from engines.cache import atomic_write, pack_calibration_cache, unpack_calibration_cache
from engines.feed import CalibrationFeed
from engines.onnx_info import InputLayout

if TYPE_CHECKING:
    from typing_extensions import Buffer

log = logging.getLogger(__name__)


class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
    """Feeds the batches of a ``CalibrationFeed``; reuses a calibration cache file when it was
    written for the same model (``model_sha256``).

    TensorRT calls it from the building thread, in which the CUDA context is current.
    """

    def __init__(
        self,
        feed: CalibrationFeed,
        layout: InputLayout,
        shape: tuple[int, ...],
        cache: Path | None,
        model_sha256: str,
    ) -> None:
        trt.IInt8EntropyCalibrator2.__init__(self)
        if len(feed) < shape[0]:
            raise ValueError(f"{feed.name} holds {len(feed)} images, at least {shape[0]} needed")
        self._batches = feed.batches(layout, shape)
        self._batch_size = shape[0]
        self._cache = cache
        self._model_sha256 = model_sha256
        dtype = np.uint8 if layout is InputLayout.UINT8_NHWC else np.float32
        self._device = cuda.mem_alloc(int(np.prod(shape)) * np.dtype(dtype).itemsize)
        log.info("INT8 calibration", extra={"images": len(feed), "batch": shape[0]})

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
