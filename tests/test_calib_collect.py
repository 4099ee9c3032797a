"""``calib collect``'s frame choice: near-duplicates and the camera x brightness spread."""

from __future__ import annotations

import numpy as np

from calib.collect import _Candidate, is_duplicate, select_spread, thumbnail


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
