"""Calibration images: any folder of images, a YOLO dataset root, or a ``calib collect`` output.

Frames reach the model through the daemon's own ``letterbox_into`` and the ONNX Runtime
backend's ``x / 255`` NCHW conversion, so calibration sees exactly the tensors inference does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from daemon.batch.letterbox import LetterboxGeometry, letterbox_into
from daemon.monitor.brightness import mean_luma
from daemon.stills import IMAGE_SUFFIXES, ImageError, read_image

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


class CalibrationDataError(ValueError):
    """The calibration input is unusable; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class CalibrationImage:
    """One calibration image; camera/ts/brightness come from a collect manifest when present."""

    path: Path
    camera: str | None = None
    ts: float | None = None
    brightness: float | None = None


@dataclass(frozen=True, slots=True)
class LetterboxedBatch:
    """A batch ready for ``Backend.infer``: ``images`` is a view of a reused buffer."""

    images: npt.NDArray[np.uint8]
    geometries: tuple[LetterboxGeometry, ...]
    paths: tuple[Path, ...]


def list_calibration_images(source: Path) -> list[CalibrationImage]:
    """The images of ``source``: a collect output (``manifest.json``), a dataset root with an
    ``images/`` folder, or a plain folder of jpg/png files (sorted, not recursive)."""
    if not source.is_dir():
        raise CalibrationDataError(f"calibration image folder not found: {source}")
    manifest = source / MANIFEST_NAME
    if manifest.is_file():
        return _from_manifest(manifest)
    folder = source / "images" if (source / "images").is_dir() else source
    found = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not found:
        raise CalibrationDataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return [CalibrationImage(p) for p in found]


def _from_manifest(manifest: Path) -> list[CalibrationImage]:
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationDataError(f"{manifest}: not readable JSON: {exc}") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list):
        raise CalibrationDataError(f"{manifest}: expected an object with a 'frames' list")
    images: list[CalibrationImage] = []
    for n, entry in enumerate(frames):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise CalibrationDataError(f"{manifest}: frames[{n}] has no 'file' string")
        path = manifest.parent / entry["file"]
        if not path.is_file():
            log.warning(
                "calibration frame listed in the manifest is missing; skipped",
                extra={"file": str(path)},
            )
            continue
        camera, ts, brightness = entry.get("camera"), entry.get("ts"), entry.get("brightness")
        images.append(
            CalibrationImage(
                path,
                camera if isinstance(camera, str) else None,
                float(ts) if isinstance(ts, (int, float)) else None,
                float(brightness) if isinstance(brightness, (int, float)) else None,
            )
        )
    if not images:
        raise CalibrationDataError(f"{manifest}: lists no existing image files")
    return images


def iter_letterboxed(
    images: Sequence[CalibrationImage | Path],
    input_hw: tuple[int, int],
    batch_size: int,
    brightness_out: list[float] | None = None,
    skip_unreadable: bool = True,
) -> Iterator[LetterboxedBatch]:
    """Letterbox ``images`` in batches into one reused buffer. Files that cannot be decoded
    are skipped with a warning, or raise ``ImageError`` when ``skip_unreadable`` is False.
    Mean luma of each used image goes to ``brightness_out``."""
    h, w = input_hw
    buffer = np.empty((batch_size, h, w, 3), dtype=np.uint8)
    geometries: list[LetterboxGeometry] = []
    paths: list[Path] = []
    for item in images:
        path = item.path if isinstance(item, CalibrationImage) else item
        try:
            bgr = read_image(path)
        except ImageError as exc:
            if not skip_unreadable:
                raise
            log.warning("unreadable calibration image skipped", extra={"reason": str(exc)})
            continue
        if brightness_out is not None:
            brightness_out.append(mean_luma(bgr))
        geometries.append(letterbox_into(bgr, buffer[len(paths)]))
        paths.append(path)
        if len(paths) == batch_size:
            yield LetterboxedBatch(buffer, tuple(geometries), tuple(paths))
            geometries, paths = [], []
    if paths:
        yield LetterboxedBatch(buffer[: len(paths)], tuple(geometries), tuple(paths))


def to_network_input(batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """uint8 NHWC RGB -> float32 NCHW 0..1, the ONNX Runtime backend's arithmetic."""
    out = np.empty((batch.shape[0], 3, batch.shape[1], batch.shape[2]), dtype=np.float32)
    np.divide(batch.transpose(0, 3, 1, 2), np.float32(255), out=out, casting="unsafe")
    return out
