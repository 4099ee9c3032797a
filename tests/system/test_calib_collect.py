"""``calib collect``: the frame choice (near-duplicates, the camera x brightness spread) and
a real run of the command on file cameras."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from calib.collect import _Candidate, is_duplicate, select_spread, thumbnail
from daemon.progress import LOG_EVERY_S
from tests.fixtures.data import REPO


def test_near_duplicates_detected_by_thumbnail() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)
    noisy = np.clip(frame.astype(np.int16) + rng.integers(-2, 3, frame.shape), 0, 255)
    other = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)
    kept = [thumbnail(frame)]
    assert is_duplicate(thumbnail(noisy.astype(np.uint8)), kept, 3.0)
    assert not is_duplicate(thumbnail(other), kept, 3.0)
    assert not is_duplicate(thumbnail(frame), [], 3.0)


def test_selection_spreads_over_cameras_and_brightness() -> None:
    # Camera "a" was seen far longer (and only in daylight) than camera "b" at night.
    pool = [_Candidate("a", float(t), 150.0, b"") for t in range(40)]
    pool += [_Candidate("b", 100.0 + t, 20.0, b"") for t in range(4)]
    pool += [_Candidate("b", 200.0 + t, 140.0, b"") for t in range(4)]
    chosen = select_spread(pool, 9)
    groups = [(c.camera, c.brightness) for c in chosen]
    assert len(chosen) == 9
    assert groups.count(("b", 20.0)) == 3
    assert groups.count(("b", 140.0)) == 3
    assert groups.count(("a", 150.0)) == 3
    assert len({c.ts for c in chosen}) == 9
    assert len(select_spread(pool, 100)) == len(pool)


def test_a_real_run_reports_progress_and_exits_cleanly(
    tmp_path: Path, videos: list[Path], model_onnx: Path
) -> None:
    config = tmp_path / "cameras.yaml"
    cameras = [{"id": f"cam{i}", "url": str(video)} for i, video in enumerate(videos[:2])]
    config.write_text(yaml.safe_dump({"cameras": cameras, "model": {"path": str(model_onnx)}}))
    config.chmod(0o600)
    out = tmp_path / "frames"
    # Far more frames than two cameras give in the time allowed: sampling runs until
    # --max-duration, past the first progress line.
    duration = 2 * LOG_EVERY_S
    result = subprocess.run(
        [
            *(sys.executable, "-m", "daemon", "calib", "collect", "--config", str(config)),
            *("--out", str(out), "--frames", "1000", "--interval", "0.2"),
            *("--max-duration", str(duration)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    # A frame view kept past the camera's stop made SharedMemory.__del__ fail at exit.
    assert "Exception ignored" not in result.stderr
    assert "Traceback" not in result.stderr
    progress = [line for line in result.stderr.splitlines() if "msg=progress" in line]
    assert progress, result.stderr
    assert 'task="sampling frames"' in progress[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["frames"]
