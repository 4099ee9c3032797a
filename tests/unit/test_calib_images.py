"""Calibration data loader: plain folders, dataset roots, collect manifests, bad files."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from calib.images import (
    CalibrationDataError,
    iter_letterboxed,
    list_calibration_images,
    to_network_input,
)
from daemon.monitor.brightness import mean_luma
from daemon.stills import ImageError


def _write(path: Path, value: int, size: tuple[int, int] = (48, 64)) -> Path:
    cv2.imwrite(str(path), np.full((*size, 3), value, np.uint8))
    return path


def test_plain_folder_sorted_images_only(tmp_path: Path) -> None:
    _write(tmp_path / "b.png", 10)
    _write(tmp_path / "a.jpg", 20)
    (tmp_path / "notes.txt").write_text("not an image")
    images = list_calibration_images(tmp_path)
    assert [i.path.name for i in images] == ["a.jpg", "b.png"]
    assert images[0].camera is None


def test_dataset_root_uses_images_subfolder(shared_dir: Path) -> None:
    images = list_calibration_images(shared_dir / "datasets" / "coco_calib")
    assert len(images) == 128
    assert all(i.path.parent.name == "images" for i in images)


def test_manifest_of_collect_output(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path / "cam1_00000.jpg", 50)
    frames = [
        {"file": "cam1_00000.jpg", "camera": "cam1", "ts": 1.5, "brightness": 50.0},
        {"file": "gone.jpg", "camera": "cam1", "ts": 2.0, "brightness": 60.0},
    ]
    (tmp_path / "manifest.json").write_text(json.dumps({"frames": frames}))
    with caplog.at_level(logging.WARNING):
        images = list_calibration_images(tmp_path)
    assert [(i.path.name, i.camera, i.ts, i.brightness) for i in images] == [
        ("cam1_00000.jpg", "cam1", 1.5, 50.0)
    ]
    assert "missing" in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable JSON"),
        ('{"frames": 3}', "'frames' list"),
        ('{"frames": [{"camera": "x"}]}', "no 'file'"),
        ('{"frames": []}', "no existing"),
    ],
)
def test_bad_manifest_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(CalibrationDataError, match=message):
        list_calibration_images(tmp_path)


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CalibrationDataError, match="not found"):
        list_calibration_images(tmp_path / "nope")
    with pytest.raises(CalibrationDataError, match="no images"):
        list_calibration_images(tmp_path)


def test_unreadable_images_skipped_or_raised(tmp_path: Path, shared_dir: Path) -> None:
    real = sorted((shared_dir / "datasets" / "coco_calib" / "images").glob("*.jpg"))[:3]
    for p in real:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    images = list_calibration_images(tmp_path)
    assert len(images) == 4
    luma: list[float] = []
    batches = list(iter_letterboxed(images, (640, 640), 2, luma))
    assert [len(b.paths) for b in batches] == [2, 1]
    assert len(luma) == 3
    assert batches[0].images.shape == (2, 640, 640, 3)
    x = to_network_input(batches[1].images)
    assert x.shape == (1, 3, 640, 640)
    assert x.dtype == np.float32
    assert x.min() >= 0.0
    assert x.max() <= 1.0
    with pytest.raises(ImageError, match=r"broken\.jpg"):
        list(iter_letterboxed(images, (640, 640), 2, skip_unreadable=False))


def test_mean_luma_uses_bgr_weights() -> None:
    blue = np.zeros((64, 64, 3), np.uint8)
    blue[..., 0] = 255
    assert mean_luma(blue) == pytest.approx(0.114 * 255, rel=1e-3)
    assert mean_luma(np.full((64, 64, 3), 100, np.uint8)) == pytest.approx(100, rel=1e-3)
