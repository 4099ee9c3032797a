"""`edgewatch detect` and still-image detection against Ultralytics' own predictions.

The reference (tests/data/ultralytics_predict_coco_eval.json) is YOLO.predict of the same
weights (yolov8n.pt) on all 128 coco_eval images at conf 0.25 / iou 0.7 / imgsz 640, made by
tests/reference/generate_ultralytics.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from daemon.cli import main
from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend
from daemon.postprocess.match import Agreement, match
from daemon.postprocess.yolo import Detections
from daemon.stills import ImageError, detect_images, list_images, read_image
from engines.onnx_info import file_sha256
from tests.fixtures.data import COCO_EVAL, MODEL_ONNX, MODEL_PT, TEST_DATA

FIXTURE = TEST_DATA / "ultralytics_predict_coco_eval.json"


def _rows_to_detections(rows: list[list[float]]) -> Detections:
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return Detections(
        arr[:, :4].astype(np.float32), arr[:, 4].astype(np.float32), arr[:, 5].astype(np.int64)
    )


@pytest.fixture(scope="module")
def reference() -> dict[str, object]:
    data: dict[str, object] = json.loads(FIXTURE.read_text())
    return data


def _detect(model: Path, paths: list[Path], rect: bool) -> dict[str, Detections]:
    backend = OnnxRuntimeBackend(model, max_batch=1)
    try:
        return {p.name: d for p, d in detect_images(backend, paths, 0.25, 0.7, 300, rect=rect)}
    finally:
        backend.close()


def _agreement(ours: dict[str, Detections], images: dict[str, list[list[float]]]) -> Agreement:
    total = Agreement(0, 0, 0)
    for name, found in ours.items():
        total = total + match(_rows_to_detections(images[name]), found, iou=0.5)
    return total


def test_fixture_describes_the_shared_weights(reference: dict[str, object]) -> None:
    meta = reference["meta"]
    assert isinstance(meta, dict)
    # The reference was made from these very files (not a copy of a constant).
    for weights in (MODEL_PT, MODEL_ONNX):
        assert meta["models"][weights.name]["sha256"] == file_sha256(weights)
    preds = reference["predictions"]
    assert isinstance(preds, dict)
    assert preds["settings"]["conf"] == 0.25
    assert preds["settings"]["iou"] == 0.7
    assert len(preds["images"]) == 128


def test_reproduces_ultralytics_predict(model_onnx: Path, reference: dict[str, object]) -> None:
    """The acceptance check: all 128 images (~10 s on 2 cores), Ultralytics' default predict
    letterbox (minimal padding), class-aware matching at IoU >= 0.5, F1 >= 0.97."""
    preds = reference["predictions"]
    assert isinstance(preds, dict)
    paths = list_images([COCO_EVAL / "images"])
    assert {p.name for p in paths} == set(preds["images"])
    agreement = _agreement(_detect(model_onnx, paths, rect=True), preds["images"])
    assert agreement.reference > 500  # the fixture is not trivially empty
    assert agreement.f1 >= 0.97, agreement


def test_square_letterbox_matches_ultralytics_square(
    model_onnx: Path, reference: dict[str, object]
) -> None:
    # The daemon's fixed 640x640 letterbox against Ultralytics predict with rect=False: the
    # same input pixels, so only float noise could separate them (a subset keeps it quick).
    preds = reference["predictions_square"]
    assert isinstance(preds, dict)
    paths = list_images([COCO_EVAL / "images"])[:32]
    agreement = _agreement(_detect(model_onnx, paths, rect=False), preds["images"])
    assert agreement.reference > 100
    assert agreement.f1 >= 0.99, agreement


def test_detect_batches_agree_with_single_images(model_onnx: Path) -> None:
    paths = list_images([COCO_EVAL / "images"])[:5]
    backend = OnnxRuntimeBackend(model_onnx, max_batch=4)
    try:
        single = [d for _, d in detect_images(backend, paths, 0.25, 0.7, batch_size=1)]
        batched = [d for _, d in detect_images(backend, paths, 0.25, 0.7, batch_size=4)]
    finally:
        backend.close()
    for a, b in zip(single, batched, strict=True):
        assert match(a, b, iou=0.9).f1 == 1.0


def test_cli_writes_json(
    model_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = sorted((COCO_EVAL / "images").glob("*.jpg"))[:2]
    out = tmp_path / "dets.json"
    rc = main(["detect", "--model", str(model_onnx), *map(str, images), "--json", str(out)])
    assert rc == 0
    records = json.loads(out.read_text())
    assert [r["image"] for r in records] == [p.name for p in images]
    dets = [d for r in records for d in r["detections"]]
    assert dets
    for d in dets:
        assert set(d) == {"class_id", "name", "confidence", "box"}
        assert 0.25 < d["confidence"] <= 1.0
        assert len(d["box"]) == 4
    assert "2 images" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing-model", "bad-model", "bad-image", "missing-image"])
def test_cli_bad_input_exits_2(
    case: str, model_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(sorted((COCO_EVAL / "images").glob("*.jpg"))[0])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not a picture")
    model = {"missing-model": str(tmp_path / "none.onnx"), "bad-model": str(garbage)}.get(
        case, str(model_onnx)
    )
    target = {"bad-image": str(garbage), "missing-image": str(tmp_path / "none.jpg")}.get(
        case, image
    )
    rc = main(["detect", "--model", model, target, "--json", str(tmp_path / "o.json")])
    err = capsys.readouterr().err
    problems = [line for line in err.splitlines() if line.startswith("edgewatch detect: ")]
    assert rc == 2
    assert len(problems) == 1, err
    assert "Traceback" not in err


def test_read_image_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="cannot decode"):
        read_image(empty)
    with pytest.raises(ImageError, match="cannot read"):
        read_image(tmp_path / "absent.png")
    folder = tmp_path / "empty_dir"
    folder.mkdir()
    with pytest.raises(ImageError, match="no images"):
        list_images([folder])
