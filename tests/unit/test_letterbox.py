"""letterbox_into against Ultralytics' LetterBox(auto=False) arithmetic, re-stated here from
ultralytics/data/augment.py (8.4.190) so the test runs without Ultralytics."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from daemon.batch.letterbox import PAD_VALUE, letterbox_into, rect_shape

SIZES = [
    (480, 640),
    (640, 480),
    (427, 640),
    (333, 500),
    (1, 3000),
    (3000, 1),
    (7, 5),
    (640, 640),
    (641, 639),
    (1080, 1920),
    (361, 641),
    (99, 101),
]


def _ultralytics_letterbox(
    img: npt.NDArray[np.uint8], new_shape: tuple[int, int]
) -> tuple[npt.NDArray[np.uint8], float, int, int]:
    """LetterBox(new_shape, auto=False, scaleup=True, center=True) then BGR->RGB."""
    shape = img.shape[:2]
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    new_unpad = max(round(shape[1] * r), 1), max(round(shape[0] * r), 1)
    dw, dh = (new_shape[1] - new_unpad[0]) / 2, (new_shape[0] - new_unpad[1]) / 2
    resized = (
        img
        if shape[::-1] == new_unpad
        else np.asarray(cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR), np.uint8)
    )
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    padded = cv2.copyMakeBorder(
        resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114)
    )
    return np.ascontiguousarray(padded[..., ::-1]), r, left, top


def _image(h: int, w: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("h", "w"), SIZES)
@pytest.mark.parametrize("dst_hw", [(640, 640), (384, 640)])
def test_matches_ultralytics_pixels_and_geometry(h: int, w: int, dst_hw: tuple[int, int]) -> None:
    src = _image(h, w)
    expected, scale, left, top = _ultralytics_letterbox(src, dst_hw)
    assert expected.shape[:2] == dst_hw  # the reference pads to exactly the target
    dst = np.full((*dst_hw, 3), 7, dtype=np.uint8)
    geometry = letterbox_into(src, dst)
    assert (geometry.pad_left, geometry.pad_top) == (left, top)
    assert geometry.scale == pytest.approx(scale)
    assert (geometry.src_width, geometry.src_height) == (w, h)
    np.testing.assert_array_equal(dst, expected)


def test_pads_with_114_over_previous_content() -> None:
    dst = np.zeros((640, 640, 3), dtype=np.uint8)
    letterbox_into(_image(640, 640, 1), dst)  # fills everything with picture
    geometry = letterbox_into(_image(200, 640, 2), dst)  # wide: pads top and bottom
    assert geometry.pad_top == 220
    assert (dst[:220] == PAD_VALUE).all()
    assert (dst[420:] == PAD_VALUE).all()
    assert not (dst[220:420] == PAD_VALUE).all()


@pytest.mark.parametrize(("h", "w"), [(480, 640), (640, 640), (333, 500)])
def test_writes_in_place_into_a_non_contiguous_slot(h: int, w: int) -> None:
    canvas = np.full((2, 700, 720, 3), 9, dtype=np.uint8)
    slot = canvas[1, 30:670, 40:680]  # rows strided by the wider canvas
    assert not slot.flags.c_contiguous
    src = _image(h, w, 3)
    letterbox_into(src, slot)
    expected, *_ = _ultralytics_letterbox(src, (640, 640))
    np.testing.assert_array_equal(canvas[1, 30:670, 40:680], expected)
    # Nothing outside the slot was touched.
    assert (canvas[0] == 9).all()
    assert (canvas[1, :30] == 9).all()
    assert (canvas[1, 670:] == 9).all()
    assert (canvas[1, :, :40] == 9).all()
    assert (canvas[1, :, 680:] == 9).all()


@pytest.mark.parametrize(
    ("h", "w", "expected"),
    [
        ((480, 640, (480, 640))),
        ((427, 640, (448, 640))),
        ((640, 427, (640, 448))),
        ((500, 333, (640, 448))),  # 333 * 1.28 = 426.24 -> 426, padded to 448
        ((1, 3000, (32, 640))),
    ],
)
def test_rect_shape_is_ultralytics_auto_letterbox(
    h: int, w: int, expected: tuple[int, int]
) -> None:
    assert rect_shape((h, w), (640, 640)) == expected
    # letterbox_into on that canvas gives Ultralytics' auto=True padding (stride remainder / 2).
    canvas = np.empty((*expected, 3), dtype=np.uint8)
    geometry = letterbox_into(_image(h, w), canvas)
    new_h, new_w = max(round(h * geometry.scale), 1), max(round(w * geometry.scale), 1)
    assert geometry.pad_top == round((expected[0] - new_h) / 2 - 0.1)
    assert geometry.pad_left == round((expected[1] - new_w) / 2 - 0.1)
