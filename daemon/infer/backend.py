"""The one interface every inference runtime implements.

A backend takes the batcher's uint8 RGB NHWC batch exactly as it is (normalisation and
layout change are the backend's business, so a GPU backend can do them on the GPU) and
returns the raw YOLOv8 head ``[n, 4 + num_classes, anchors]`` as float32. A backend that can
also decode and NMS where the head is (``DeviceNms``) returns only the kept boxes instead,
so the head never crosses to the host; one that also takes a batch already in device memory
(``DeviceInput``, the batcher's letterbox of GPU-decoded frames) never needs its pixels on the
host either. A GPU backend may also tell where a batch's time went (``TimedTransfers``).
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from daemon.capture.device_gate import DeviceGate

UInt8Batch = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]


log = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """A model could not be loaded or run; the message is meant for the operator."""


def check_batch(
    batch: UInt8Batch, max_batch: int, input_hw: tuple[int, int], dynamic_hw: bool
) -> None:
    """Raise ``ValueError`` unless ``batch`` is what ``Backend.infer`` accepts: uint8
    ``[1..max_batch, H, W, 3]`` with ``(H, W) == input_hw``, or at most it when ``dynamic_hw``."""
    check_shape(
        tuple(batch.shape), dtype=str(batch.dtype), uint8=batch.dtype == np.uint8,
        max_batch=max_batch, input_hw=input_hw, dynamic_hw=dynamic_hw,
    )  # fmt: skip


def check_shape(
    shape: tuple[int, ...], *, dtype: str, uint8: bool,
    max_batch: int, input_hw: tuple[int, int], dynamic_hw: bool,
) -> None:  # fmt: skip
    """``check_batch``'s rule for any array type (a device tensor too): its ``shape``,
    whether its dtype is uint8, and the dtype's name for the message."""
    max_h, max_w = input_hw
    ok = (
        uint8
        and len(shape) == 4
        and shape[3] == 3
        and 1 <= shape[0] <= max_batch
        and shape[1] <= max_h
        and shape[2] <= max_w
    )
    if ok and not dynamic_hw:
        ok = shape[1:3] == input_hw
    if not ok:
        size = f"<={max_h}, <={max_w}" if dynamic_hw else f"{max_h}, {max_w}"
        raise ValueError(
            f"batch must be uint8 [1..{max_batch}, {size}, 3], got {dtype} {list(shape)}"
        )


def parse_class_names(raw: str | None, num_classes: int | None) -> tuple[str, ...]:
    """Class names from Ultralytics' ``names`` metadata (a Python dict or list literal),
    ``class_<i>`` for any id it lacks. ``num_classes`` is the output's class axis (None when
    dynamic: the metadata then decides)."""
    parsed: dict[int, str] = {}
    if raw:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            log.warning("model metadata 'names' is not a Python literal; using class_<i>")
        else:
            if isinstance(value, dict):
                parsed = _names_by_id(value)
            elif isinstance(value, (list, tuple)):
                parsed = {i: str(v) for i, v in enumerate(value)}
    count = num_classes if num_classes is not None else (max(parsed) + 1 if parsed else 0)
    if count == 0:
        raise BackendError(
            "cannot tell the number of classes: the output's class axis is dynamic and the "
            "model has no 'names' metadata"
        )
    if parsed and num_classes is not None and len(parsed) != num_classes:
        log.warning(
            "model metadata names a different number of classes than the output has",
            extra={"names": len(parsed), "output_classes": num_classes},
        )
    return tuple(parsed.get(i, f"class_{i}") for i in range(count))


def _names_by_id(names: dict[object, object]) -> dict[int, str]:
    """``{0: 'person', ...}``; a key that is not a class id would misname every class."""
    parsed = {}
    for key, name in names.items():
        try:
            class_id = int(str(key))
        except ValueError:
            raise BackendError(
                f"model metadata 'names' maps {key!r} to {name!r}; keys must be class ids 0, 1, ..."
            ) from None
        if class_id < 0:
            raise BackendError(f"model metadata 'names' has a negative class id {class_id}")
        parsed[class_id] = str(name)
    return parsed


@runtime_checkable
class Backend(Protocol):
    """Loaded model ready for inference.

    ``infer`` may be called from up to ``max_inflight`` threads at once. The returned array
    is valid until the calling thread's next ``infer`` call (a GPU backend may return a view
    of its pinned output buffer), so callers post-process before inferring again.
    """

    @property
    def name(self) -> str:
        """Short runtime name for logs and metrics, e.g. ``onnxruntime:CPUExecutionProvider``."""
        ...

    @property
    def input_hw(self) -> tuple[int, int]:
        """Network input (height, width)."""
        ...

    @property
    def dynamic_hw(self) -> bool:
        """Whether batches may be smaller than ``input_hw`` (a multiple of the stride), so
        16:9 cameras can run at 384x640 instead of 640x640, as Ultralytics' rect mode does."""
        ...

    @property
    def max_batch(self) -> int: ...

    @property
    def max_inflight(self) -> int:
        """How many ``infer`` calls may overlap (GPU backends pipeline several batches)."""
        ...

    @property
    def class_names(self) -> tuple[str, ...]: ...

    def infer(self, batch: UInt8Batch) -> FloatArray:
        """Run ``batch`` (``[n, H, W, 3]`` uint8 RGB, ``1 <= n <= max_batch``)."""
        ...

    def warm_up(self, hws: Iterable[tuple[int, int]]) -> None:
        """Compile and run once every batch shape at these input sizes that would otherwise
        be compiled on first use (for ``dynamic_hw`` sizes the batcher can produce; else
        only ``input_hw``), so no batch served stalls on it. Blocking; any thread."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class DeviceNms(Protocol):
    """A backend that decodes the head, filters by score and runs class-aware NMS on its own
    device, with the semantics of ``daemon.postprocess.yolo.decode_one``."""

    def infer_nms(
        self, batch: UInt8Batch, conf: float, iou: float, max_det: int
    ) -> list[FloatArray]:
        """Run ``batch`` as ``Backend.infer`` does; per image the kept boxes as float32 rows
        (``x1, y1, x2, y2`` in network-input pixels, score, class id), best first."""
        ...


@runtime_checkable
class DeviceInput(Protocol):
    """A ``DeviceNms`` backend that also takes a batch already in device memory (the
    batcher's ``torch.Tensor`` batch of NVDEC frames), copied device to device."""

    @property
    def cuda_device(self) -> int | None:
        """The CUDA device index such batches must be on; None while it runs on a CPU."""
        ...

    @property
    def device_gate(self) -> DeviceGate:
        """What device work on other threads (NVDEC readers) passes, so it never meets the
        backend's CUDA graph captures."""
        ...

    def infer_nms_device(
        self, batch: Any, conf: float, iou: float, max_det: int
    ) -> list[FloatArray]:
        """As ``DeviceNms.infer_nms`` for ``batch``: a ``[n, H, W, 3]`` uint8 RGB
        ``torch.Tensor`` on a device, its writes finished or queued on the calling thread's
        current stream. Reads of it have finished when this returns."""
        ...


@dataclass(frozen=True)
class TransferTimes:
    """Where one batch's backend call spent its time, in seconds.

    ``upload_s``: the uint8 batch's way to the device (into pinned memory, then the H2D copy;
    for a batch already on the device, its copy into the backend's input buffer);
    ``compute_s``: from the end of the upload to the start of the download (the network, and
    for ``DeviceNms.infer_nms`` the decode and NMS too); ``download_s``: the D2H copy of the
    head or of the kept boxes. The three follow one another, so their sum is at most the
    call's wall time; the rest of the call is the host's own overhead (checks, launches,
    waking up).
    """

    upload_s: float
    compute_s: float
    download_s: float

    @classmethod
    def from_events(cls, staging_s: float, elapsed_ms: Sequence[float]) -> TransferTimes:
        """From the host's copy of the batch into pinned memory (``staging_s``) and the
        milliseconds between four timing events on the batch's stream: before the upload,
        after it, after the compute, after the download."""
        upload, compute, download = (ms / 1000 for ms in elapsed_ms)
        return cls(staging_s + upload, compute, download)


@runtime_checkable
class TimedTransfers(Protocol):
    """A backend that measures the transfers and the compute of each batch separately
    (a GPU backend, with timing events on the batch's stream)."""

    def last_transfer_times(self) -> TransferTimes | None:
        """The split of the calling thread's last successful ``infer`` (or ``infer_nms``)
        call; None where there is none to report: no call yet, or no device transfers (a
        CPU run, memory shared with the GPU), never zeros standing in for them."""
        ...


def transfer_times(backend: Backend) -> TransferTimes | None:
    """``backend``'s split of the calling thread's last batch, None if it reports none."""
    return backend.last_transfer_times() if isinstance(backend, TimedTransfers) else None
