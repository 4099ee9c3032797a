"""mAP of a model on a labelled image folder, and label-free agreement of two models, both
through the daemon's own letterbox, backend and YOLOv8 decoding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from calib.decode import decode_multi_label
from calib.labels import read_yolo_labels
from calib.metrics import DetectionStats
from daemon.infer.backend import Backend
from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend
from daemon.postprocess.match import Agreement, match
from daemon.postprocess.yolo import decode_one
from daemon.stills import StillDetections, decode_images


class EvaluationError(ValueError):
    """The labels give nothing to measure against; the message says what to fix."""


@dataclass(frozen=True)
class EvalSettings:
    """Ultralytics ``val`` defaults; ``multi_label`` as val's NMS (see calib/decode.py)."""

    conf: float = 0.001
    iou: float = 0.7
    max_det: int = 300
    batch_size: int = 8
    multi_label: bool = True


@dataclass(frozen=True)
class MapReport:
    map50_95: float
    map50: float
    images: int
    instances: int
    classes: int

    def line(self) -> str:
        return f"mAP50-95={self.map50_95:.4f} mAP50={self.map50:.4f}"


def _detect(
    backend: Backend, paths: Sequence[Path], settings: EvalSettings
) -> Iterator[StillDetections]:
    # An unreadable image raises (ImageError): a silently skipped one would change the score.
    decode = partial(
        decode_multi_label if settings.multi_label else decode_one,
        conf=settings.conf,
        iou=settings.iou,
        max_det=settings.max_det,
    )
    return decode_images(backend, paths, decode, batch_size=settings.batch_size)


def check_labels(images: Sequence[Path], labels_dir: Path) -> None:
    """Raise ``EvaluationError`` when no label file in ``labels_dir`` matches one of
    ``images`` or none holds a box (a score of 0 would then be meaningless: a wrong folder is
    not a model that detects nothing)."""
    files = [labels_dir / f"{path.stem}.txt" for path in images]
    matched = [f for f in files if f.is_file()]
    if not matched:
        raise EvaluationError(
            f"no label file in {labels_dir} matches any of the {len(images)} images "
            "(expected <image name>.txt): wrong label folder?"
        )
    # Box counts only: the pixel scale does not matter here.
    if not any(len(read_yolo_labels(f, 1, 1).class_ids) for f in matched):
        raise EvaluationError(
            f"the {len(matched)} label files in {labels_dir} for these images hold no boxes: "
            "nothing to measure against"
        )


def evaluate_map(
    backend: Backend,
    images: Sequence[Path],
    labels_dir: Path,
    settings: EvalSettings = EvalSettings(),
) -> MapReport:
    """COCO mAP50-95 / mAP50 of ``backend`` on ``images`` against ``labels_dir/<stem>.txt``
    (``EvaluationError`` before any inference when those labels hold nothing, see
    ``check_labels``)."""
    check_labels(images, labels_dir)
    stats = DetectionStats()
    instances = 0
    for path, geometry, det in _detect(backend, images, settings):
        truth = read_yolo_labels(
            labels_dir / f"{path.stem}.txt", geometry.src_width, geometry.src_height
        )
        instances += len(truth.class_ids)
        stats.add(det.boxes, det.scores, det.class_ids, truth.boxes, truth.class_ids)
    result = stats.result()
    return MapReport(
        result.map50_95, result.map50, stats.images, instances, int(result.classes.shape[0])
    )


def evaluate_file(
    model: Path,
    images: Sequence[Path],
    labels_dir: Path,
    *,
    threads: int = 0,
    fuse_qdq: bool = True,
    settings: EvalSettings = EvalSettings(),
) -> MapReport:
    """``evaluate_map`` of the ONNX file ``model`` on the ORT CPU provider (default:
    Ultralytics val settings); ``fuse_qdq=False`` runs a Q/DQ model in float
    fake-quantization."""
    backend = OnnxRuntimeBackend(
        model, intra_op_threads=threads, max_batch=settings.batch_size, fuse_qdq=fuse_qdq
    )
    try:
        return evaluate_map(backend, images, labels_dir, settings)
    finally:
        backend.close()


def evaluate_agreement(
    candidate: Backend,
    reference: Backend,
    images: Sequence[Path],
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    batch_size: int = 8,
) -> Agreement:
    """Agreement of ``candidate`` with ``reference`` detections at the daemon's operating
    confidence (single-label decode, as deployed), matched at IoU 0.5."""
    settings = EvalSettings(conf=conf, iou=iou, batch_size=batch_size, multi_label=False)
    total = Agreement()
    for cand, ref in zip(
        _detect(candidate, images, settings), _detect(reference, images, settings), strict=True
    ):
        total = total + match(ref.detections, cand.detections)
    return total
