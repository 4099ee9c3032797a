"""Which batch shapes are warmed: every (height, width) a batch of these cameras can take,
and the cameras held back until theirs is warm."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest

from daemon.batch.letterbox import batch_hws, rect_shape
from daemon.infer.warmup import ShapeWarmer

# 16:9, 4:3, PAL D1, portrait 9:16
FRAMES = [(1080, 1920), (480, 640), (576, 704), (1920, 1080)]


def test_fixed_size_models_have_one_batch_size() -> None:
    assert batch_hws(FRAMES, (640, 640), dynamic_hw=False) == {(640, 640)}


def test_rect_mode_covers_every_mix_of_cameras() -> None:
    got = batch_hws(FRAMES, (640, 640), dynamic_hw=True)
    rects = [rect_shape(hw, (640, 640)) for hw in FRAMES]
    # A batch is as large as its largest camera in each dimension (BatchBuffer.assemble).
    mixes = {
        (max(r[0] for r in group), max(r[1] for r in group))
        for k in range(1, len(rects) + 1)
        for group in itertools.combinations(rects, k)
    }
    assert got == mixes
    assert {(384, 640), (480, 640), (544, 640), (640, 384), (640, 640)} == got


class _RectBackend:
    """The ``Backend`` members the warmer reads, for a rect-mode (``dynamic_hw``) model; it
    records what it is asked to warm, as the torch backend compiles those shapes."""

    name = "recording"
    input_hw = (640, 640)
    dynamic_hw = True
    max_batch = 4

    def __init__(self) -> None:
        self.warmed: list[list[tuple[int, int]]] = []

    def warm_up(self, hws: Iterable[tuple[int, int]]) -> None:
        self.warmed.append(list(hws))


def test_new_frame_sizes_warm_only_what_is_new() -> None:
    backend = _RectBackend()
    warmer = ShapeWarmer(backend)  # type: ignore[arg-type]
    assert not warmer.is_warm((1080, 1920))
    warmer.warm([(1080, 1920)])
    assert backend.warmed == [[(384, 640)]]
    assert warmer.is_warm((720, 1280))  # same rect shape as 1080p
    assert not warmer.is_warm((480, 640))
    assert not warmer.is_warm(None)
    warmer.warm([(480, 640)])
    # 480x640 alone and mixed with 384x640 (max per dimension: 480x640 again).
    assert backend.warmed[-1] == [(480, 640)]
    warmer.warm([(1080, 1920)])
    assert len(backend.warmed) == 2  # nothing new: no call
    warmer.warm([(1920, 1080)])
    assert sorted(backend.warmed[-1]) == [(640, 384), (640, 640)]
    # A square camera's shape is warm already (portrait and landscape mixed): nothing to
    # compile, and the camera is no longer held back.
    assert not warmer.is_warm((720, 720))
    warmer.warm([(720, 720)])
    assert len(backend.warmed) == 3
    assert warmer.is_warm((720, 720))


@pytest.mark.parametrize("frames", [[], [(1080, 1920)]])
def test_a_fixed_size_backend_is_warmed_once_whatever_the_cameras(
    frames: list[tuple[int, int]],
) -> None:
    backend = _RectBackend()
    backend.dynamic_hw = False
    warmer = ShapeWarmer(backend)  # type: ignore[arg-type]
    assert not warmer.is_warm((1080, 1920))
    warmer.warm(frames)
    warmer.warm([(480, 640)])
    assert backend.warmed == [[(640, 640)]]
    assert warmer.is_warm(None)
    assert warmer.is_warm((480, 640))
