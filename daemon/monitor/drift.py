"""Drift check of a deployed (INT8) model while the daemon runs.

Two signals per camera, published in the stats (``DriftStats``) and logged as rate-limited
warnings:

* agreement: 1 of every ``every_n_frames`` processed frames is handed, already letterboxed,
  with the deployed model's detections, to one worker thread that runs the FP32 reference
  model on it (ONNX Runtime CPU, 1 thread, batch 1) and matches the two detection sets
  (``daemon.postprocess.match``). F1 over a sliding window of samples; warning below
  ``min_agreement``. The hand-over queue holds 2 samples and drops when full, so the shadow
  inference never slows the pipeline and its CPU use is bounded by one core at most;
* brightness: mean luma of every processed frame (a strided subsample of the letterboxed
  image, without its padding; for a batch on a device, computed there), averaged over each
  stats interval and compared with the brightness range of the calibration frames
  (recorded in the INT8 model by ``calibrate``, or ``drift.calibrated_brightness``);
  warning when outside.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import numpy.typing as npt

from daemon.batch.batcher import Batch
from daemon.batch.images import BatchImages, host_copy
from daemon.batch.letterbox import LetterboxGeometry, place
from daemon.config.model import BackendKind, ModelConfig
from daemon.infer.backend import Backend, BackendError
from daemon.infer.factory import load_backend
from daemon.monitor.brightness import MetadataError, mean_luma, read_calibration_brightness
from daemon.postprocess.match import Agreement, match
from daemon.postprocess.yolo import Detections, decode_one
from daemon.publish.camera_stats import CameraStats, DriftStats

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 50
# Fewer samples than this say too little to warn about (one busy frame can drop F1 a lot).
DEFAULT_MIN_SAMPLES = 10
DEFAULT_QUEUE_SIZE = 2
# While a condition persists, repeat its warning this often.
DEFAULT_WARN_EVERY_S = 300.0
_CLOSE_TIMEOUT_S = 10.0


class _Transition(Enum):
    RAISED = "raised"
    CLEARED = "cleared"


class _Alarm:
    """One condition of one camera: warn when it starts, repeat every ``every_s`` while it
    lasts, note when it ends."""

    __slots__ = ("active", "last_warned")

    def __init__(self) -> None:
        self.active = False
        self.last_warned = -math.inf

    def update(self, bad: bool, now: float, every_s: float) -> _Transition | None:
        if not bad:
            was, self.active = self.active, False
            return _Transition.CLEARED if was else None
        self.active = True
        if now - self.last_warned < every_s:
            return None
        self.last_warned = now
        return _Transition.RAISED


class _CameraDrift:
    __slots__ = (
        "agreement_alarm",
        "brightness_alarm",
        "frames",
        "luma_count",
        "luma_sum",
        "window",
    )

    def __init__(self, window: int) -> None:
        self.frames = 0
        self.window: deque[Agreement] = deque(maxlen=window)
        self.luma_sum = 0.0
        self.luma_count = 0
        self.agreement_alarm = _Alarm()
        self.brightness_alarm = _Alarm()


@dataclass(frozen=True, slots=True)
class _Sample:
    camera_id: str
    # A host copy: the batch buffer is reused as soon as the batch is decoded.
    image: npt.NDArray[np.uint8]
    geometry: LetterboxGeometry
    detections: Detections
    conf: float


def _content(image: BatchImages, geometry: LetterboxGeometry) -> BatchImages:
    """The letterboxed frame inside ``image`` (a view without the padding)."""
    placed = place((geometry.src_height, geometry.src_width), (image.shape[0], image.shape[1]))
    top, left = geometry.pad_top, geometry.pad_left
    return image[top : top + placed.new_h, left : left + placed.new_w]


def _lumas(batch: Batch) -> list[float]:
    """``mean_luma`` of each frame of ``batch``; for a batch on a device, computed there."""
    contents = [_content(image, g) for image, g in zip(batch.images, batch.geometries, strict=True)]
    if isinstance(batch.images, np.ndarray):
        return [mean_luma(content[..., ::-1]) for content in contents]  # RGB -> BGR view
    from daemon.monitor.device_luma import mean_lumas

    return mean_lumas(contents)


class DriftMonitor:
    """Shadow inference and brightness watch (see the module docstring).

    ``observe`` is called from inference threads, ``attach`` and ``forget`` from the loop;
    the worker thread starts at construction and stops in ``close``, which also closes
    ``reference`` (the monitor owns it).
    """

    def __init__(
        self,
        reference: Backend,
        model: ModelConfig,
        calibrated: tuple[float, float] | None,
        *,
        window: int = DEFAULT_WINDOW,
        min_samples: int = DEFAULT_MIN_SAMPLES,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        warn_every_s: float = DEFAULT_WARN_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reference = reference
        self._every_n = model.drift.every_n_frames
        self._min_agreement = model.drift.min_agreement
        self._iou = model.iou
        self._max_det = model.max_detections
        self._calibrated = calibrated
        self._window = window
        self._min_samples = min(min_samples, window)
        self._warn_every_s = warn_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cameras: dict[str, _CameraDrift] = {}
        self._queue: queue.Queue[_Sample | None] = queue.Queue(queue_size)
        self._stop = threading.Event()
        self._dropped = 0
        self._compared = 0
        self._worker_cpu_s = 0.0
        self._thread = threading.Thread(target=self._run, name="drift-check", daemon=True)
        self._thread.start()

    # -- inference threads ---------------------------------------------------------------

    def observe(self, batch: Batch, detections: Sequence[Detections], conf: float) -> None:
        """Account one decoded batch: brightness of every frame, and every ``every_n_frames``-th
        frame of a camera (with its ``detections``, decoded at ``conf``) queued for the
        reference model, or dropped when the worker is busy."""
        lumas = _lumas(batch)
        picked: list[int] = []
        with self._lock:
            for i, (meta, luma) in enumerate(zip(batch.metas, lumas, strict=True)):
                cam = self._cameras.get(meta.camera_id)
                if cam is None:
                    cam = self._cameras[meta.camera_id] = _CameraDrift(self._window)
                cam.luma_sum += luma
                cam.luma_count += 1
                if cam.frames % self._every_n == 0:
                    picked.append(i)
                cam.frames += 1
        for i in picked:
            if self._stop.is_set():
                return
            # Checked before copying the frame, so a busy worker costs the hot path nothing.
            if not self._queue.full():
                sample = _Sample(
                    batch.metas[i].camera_id,
                    host_copy(batch.images[i]),
                    batch.geometries[i],
                    detections[i],
                    conf,
                )
                with contextlib.suppress(queue.Full):  # another inference thread was faster
                    self._queue.put_nowait(sample)
                    continue
            with self._lock:
                self._dropped += 1

    # -- loop ----------------------------------------------------------------------------

    def attach(self, stats: Mapping[str, CameraStats]) -> dict[str, CameraStats]:
        """``stats`` with each camera's ``drift`` filled in; closes the brightness interval
        and warns about brightness outside the calibrated range."""
        return {
            cid: dataclasses.replace(s, drift=self._close_interval(cid)) for cid, s in stats.items()
        }

    def forget(self, camera_id: str) -> None:
        """Drop a removed camera's state."""
        with self._lock:
            self._cameras.pop(camera_id, None)

    def close(self) -> None:
        """Stop the worker (a sample in progress finishes) and close the reference model."""
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(_CLOSE_TIMEOUT_S)
        self._reference.close()

    @property
    def dropped(self) -> int:
        """Samples not checked because the worker was still busy with earlier ones."""
        with self._lock:
            return self._dropped

    @property
    def compared(self) -> int:
        """Samples the reference model has checked."""
        with self._lock:
            return self._compared

    @property
    def worker_cpu_s(self) -> float:
        """CPU time the worker thread spent on samples (its share of the machine)."""
        with self._lock:
            return self._worker_cpu_s

    def _close_interval(self, camera_id: str) -> DriftStats:
        with self._lock:
            cam = self._cameras.get(camera_id)
            if cam is None:
                return DriftStats(None, 0, None, None)
            samples = len(cam.window)
            f1 = sum(cam.window, Agreement()).f1 if samples else None
            brightness = cam.luma_sum / cam.luma_count if cam.luma_count else None
            cam.luma_sum, cam.luma_count = 0.0, 0
            in_range = None
            transition = None
            if self._calibrated is not None and brightness is not None:
                low, high = self._calibrated
                in_range = low <= brightness <= high
                transition = cam.brightness_alarm.update(
                    not in_range, self._clock(), self._warn_every_s
                )
        if transition is _Transition.RAISED:
            log.warning(
                "drift: frame brightness is outside the range the INT8 calibration covered",
                extra={
                    "camera": camera_id,
                    "brightness": brightness,
                    "calibrated": self._calibrated,
                },
            )
        elif transition is _Transition.CLEARED:
            log.info(
                "drift: frame brightness back inside the calibrated range",
                extra={"camera": camera_id},
            )
        return DriftStats(f1, samples, brightness, in_range)

    # -- worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = self._queue.get()
            if sample is None:
                return
            started = time.thread_time()
            try:
                agreement = self._compare(sample)
            except Exception:
                # A failed check must not end the worker (or touch the pipeline).
                log.exception(
                    "drift: reference inference failed", extra={"camera": sample.camera_id}
                )
                continue
            self._record(sample.camera_id, agreement, time.thread_time() - started)

    def _compare(self, sample: _Sample) -> Agreement:
        raw = self._reference.infer(sample.image[None])
        reference = decode_one(raw[0], sample.geometry, sample.conf, self._iou, self._max_det)
        return match(reference, sample.detections)

    def _record(self, camera_id: str, agreement: Agreement, cpu_s: float) -> None:
        with self._lock:
            self._compared += 1
            self._worker_cpu_s += cpu_s
            cam = self._cameras.get(camera_id)
            if cam is None:  # removed while its sample was queued
                return
            cam.window.append(agreement)
            samples = len(cam.window)
            f1 = sum(cam.window, Agreement()).f1
            if samples < self._min_samples:
                return
            transition = cam.agreement_alarm.update(
                f1 < self._min_agreement, self._clock(), self._warn_every_s
            )
        if transition is _Transition.RAISED:
            log.warning(
                "drift: detections disagree with the FP32 reference model",
                extra={
                    "camera": camera_id,
                    "agreement": round(f1, 4),
                    "min_agreement": self._min_agreement,
                    "samples": samples,
                },
            )
        elif transition is _Transition.CLEARED:
            log.info(
                "drift: agreement with the FP32 reference model recovered",
                extra={"camera": camera_id, "agreement": round(f1, 4)},
            )


def open_drift_monitor(model: ModelConfig, main: Backend) -> DriftMonitor | None:
    """The drift monitor ``model.drift`` asks for (None when off), its reference model loaded
    on ONNX Runtime CPU with one thread; ``BackendError`` when the reference cannot serve
    ``main``'s samples."""
    drift = model.drift
    if not drift.enabled:
        return None
    if drift.reference_model is None:
        raise BackendError("model.drift.reference_model is required when drift is enabled")
    reference = load_backend(_reference_config(model, drift.reference_model))
    try:
        _check_compatible(reference, main)
    except BackendError:
        reference.close()
        raise
    calibrated = drift.calibrated_brightness or _recorded_brightness(model)
    log.info(
        "drift check on",
        extra={
            "reference": str(drift.reference_model),
            "every_n_frames": drift.every_n_frames,
            "min_agreement": drift.min_agreement,
            "calibrated_brightness": None if calibrated is None else list(calibrated),
        },
    )
    return DriftMonitor(reference, model, calibrated)


def _reference_config(model: ModelConfig, reference: Path) -> ModelConfig:
    """The reference model on ONNX Runtime CPU, one frame at a time on one thread: a shadow
    check must never take cores from the deployed model."""
    return ModelConfig(
        path=reference,
        backend=BackendKind.ONNXRUNTIME,
        input_size=model.input_size,
        max_batch=1,
        providers=("CPUExecutionProvider",),
        intra_op_threads=1,
        split_sessions=1,
    )


def _check_compatible(reference: Backend, main: Backend) -> None:
    """The reference must see exactly the deployed model's inputs: a sample re-padded to
    another size changes the detections by itself (rect and square inputs of the same FP32
    model disagree on many boxes), which would read as drift."""
    if len(reference.class_names) != len(main.class_names):
        raise BackendError(
            f"model.drift.reference_model has {len(reference.class_names)} classes, the "
            f"deployed model {len(main.class_names)}: it must be the same network in FP32"
        )
    if main.dynamic_hw and not reference.dynamic_hw:
        raise BackendError(
            "model.drift.reference_model has a fixed input size but the deployed model takes "
            "minimal-padding (rect) inputs; export the reference with dynamic axes"
        )
    (ref_h, ref_w), (h, w) = reference.input_hw, main.input_hw
    if ref_h < h or ref_w < w or (not reference.dynamic_hw and (ref_h, ref_w) != (h, w)):
        raise BackendError(
            f"model.drift.reference_model takes {ref_h}x{ref_w} inputs, the deployed model "
            f"{h}x{w}: they must match"
        )


def _recorded_brightness(model: ModelConfig) -> tuple[float, float] | None:
    try:
        recorded = read_calibration_brightness(model.path)
    except MetadataError as exc:
        log.warning(
            "drift: calibration brightness unreadable; brightness is not checked",
            extra={"reason": str(exc)},
        )
        return None
    if recorded is None:
        log.info(
            "drift: the model records no calibration brightness (set "
            "model.drift.calibrated_brightness to check it)"
        )
        return None
    return recorded.covered
