"""The soak benchmark in short form; ``bench/soak.py`` is the full one.

About 75 s instead of 10 minutes: the warm-up runs each of the four faults once, then one
fault every 12 s. The bounds are the full run's (RSS within 5% of the post-warm-up baseline,
no thread, FD or child-process growth): after a warm-up that already exercised every fault,
a short run has no reason to grow at all, so there is nothing to loosen. The full run is
``python -m bench.soak`` or ``pytest -m soak``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.soak import FAULTS, SoakOptions, render_soak_table, run_soak

pytestmark = [pytest.mark.rtsp, pytest.mark.mqtt]


def _check(options: SoakOptions) -> None:
    report = run_soak(options)
    print(render_soak_table(report))
    assert options.json_out is not None
    written = json.loads(options.json_out.read_text())
    assert written["passed"] == report.passed
    kinds = {f.kind for f in report.faults}
    assert kinds == set(FAULTS)
    assert report.samples
    assert report.passed, report.failures


def test_short_soak(tmp_path: Path, shared_dir: Path) -> None:
    _check(
        SoakOptions(
            duration_s=75.0,
            fault_every_s=12.0,
            warmup_s=30.0,
            sample_every_s=2.0,
            model=shared_dir / "models" / "yolov8n.onnx",
            videos=shared_dir / "videos",
            workdir=tmp_path,
            json_out=tmp_path / "soak.json",
        )
    )


@pytest.mark.soak
def test_ten_minute_soak(tmp_path: Path, shared_dir: Path) -> None:
    _check(
        SoakOptions(
            model=shared_dir / "models" / "yolov8n.onnx",
            videos=shared_dir / "videos",
            workdir=tmp_path,
            json_out=tmp_path / "soak.json",
        )
    )
