"""The evaluator against Ultralytics ``val`` (committed fixture) on the real model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calib.evaluate import EvalSettings, evaluate_agreement, evaluate_map
from calib.labels import read_yolo_labels
from calib.metrics import DetectionStats
from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend
from daemon.stills import list_images, read_image
from tests.fixtures.data import TEST_DATA

TOLERANCE = 0.005


def _ultralytics_run(rect: bool, batch: int) -> dict[str, float]:
    runs = json.loads((TEST_DATA / "ultralytics_val_coco_eval.json").read_text())["runs"]
    return next(
        r
        for r in runs
        if r["model"] == "yolov8n.onnx"
        and r["settings_effective"]["rect"] is rect
        and r["settings_effective"]["batch"] == batch
    )


def test_metric_rescores_ultralytics_own_predictions(shared_dir: Path) -> None:
    """Same predictions -> same numbers: isolates our metric code from the model run."""
    coco = shared_dir / "datasets" / "coco_eval"
    val = json.loads((TEST_DATA / "ultralytics_val_predictions_coco_eval.json").read_text())
    stats = DetectionStats()
    for name, rows in sorted(val["pt_square_b1"]["images"].items()):
        height, width = read_image(coco / "images" / name).shape[:2]
        pred = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        truth = read_yolo_labels(coco / "labels" / f"{Path(name).stem}.txt", width, height)
        stats.add(
            pred[:, :4], pred[:, 4], pred[:, 5].astype(np.int64), truth.boxes, truth.class_ids
        )
    result = stats.result()
    expected = _ultralytics_run(rect=False, batch=1)
    assert stats.images == 128
    assert result.map50_95 == pytest.approx(expected["map50_95"], abs=0.001)
    assert result.map50 == pytest.approx(expected["map50"], abs=0.001)


@pytest.fixture(scope="module")
def fp32(model_onnx: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(model_onnx, max_batch=8)


def test_evaluator_matches_ultralytics_val(fp32: OnnxRuntimeBackend, shared_dir: Path) -> None:
    coco = shared_dir / "datasets" / "coco_eval"
    report = evaluate_map(fp32, list_images([coco / "images"]), coco / "labels")
    assert (report.images, report.instances) == (128, 898)
    # Square letterbox as the daemon: Ultralytics' square run, and its default rect run.
    for rect, batch in ((False, 1), (True, 16)):
        expected = _ultralytics_run(rect=rect, batch=batch)
        assert report.map50_95 == pytest.approx(expected["map50_95"], abs=TOLERANCE)
        assert report.map50 == pytest.approx(expected["map50"], abs=TOLERANCE)


def test_single_label_decode_scores_lower(fp32: OnnxRuntimeBackend, shared_dir: Path) -> None:
    coco = shared_dir / "datasets" / "coco_eval"
    images = list_images([coco / "images"])[:16]
    multi = evaluate_map(fp32, images, coco / "labels")
    single = evaluate_map(fp32, images, coco / "labels", EvalSettings(multi_label=False))
    assert 0 < single.map50_95 <= multi.map50_95


def test_agreement_of_a_model_with_itself(fp32: OnnxRuntimeBackend, shared_dir: Path) -> None:
    images = list_images([shared_dir / "datasets" / "coco_eval" / "images"])[:8]
    counts = evaluate_agreement(fp32, fp32, images)
    assert counts.matched > 0
    assert counts.f1 == 1.0
