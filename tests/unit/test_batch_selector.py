"""Which cameras the batch selector picks while earlier batches are still taking their frames
(several batches in flight)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from daemon.batch.batcher import BatchSelector
from daemon.capture.source import CameraSource
from daemon.config.model import CameraConfig, CaptureConfig
from daemon.config.secrets import Secret


def _camera(camera_id: str) -> CameraSource:
    return CameraSource(CameraConfig(id=camera_id, url=Secret("/none.mp4")), CaptureConfig())


@pytest.fixture
def cameras() -> Iterator[list[CameraSource]]:
    sources = [_camera(i) for i in "abcd"]
    yield sources
    for source in sources:
        source.stop()


def test_a_camera_is_not_picked_again_before_its_batch_took_the_frame(
    cameras: list[CameraSource],
) -> None:
    a, b, c, d = cameras
    selector = BatchSelector(max_batch=2, timeout_s=10.0, clock=lambda: 100.0)
    first = selector.select(cameras, live=cameras)
    assert first == [a, b]
    # a's and b's frames are still unconsumed until the first batch assembles: the next
    # batch is the other two, full at once (a and b are not waited for).
    assert selector.select(cameras, live=cameras) == [c, d]
    assert selector.select(cameras, live=cameras) is None
    selector.assembled([a, b])
    assert selector.select(cameras, live=cameras) == [a, b]


def test_the_rest_of_the_cameras_make_a_full_batch_without_waiting_for_the_held_ones(
    cameras: list[CameraSource],
) -> None:
    a, b, c, _ = cameras
    selector = BatchSelector(max_batch=4, timeout_s=10.0, clock=lambda: 100.0)
    assert selector.select([a, b], live=[a, b, c]) is None  # c streams but has no frame yet
    assert selector.select([a, b, c], live=[a, b, c]) == [a, b, c]
    selector.assembled([a, b])
    # c is held; a and b are every camera that can deliver now: no deadline to wait for.
    assert selector.select([a, b, c], live=[a, b, c]) == [a, b]


def test_a_held_camera_that_stopped_streaming_does_not_shrink_the_batch_waited_for(
    cameras: list[CameraSource],
) -> None:
    a, b, c, _ = cameras
    selector = BatchSelector(max_batch=4, timeout_s=10.0, clock=lambda: 100.0)
    assert selector.select([a], live=[a]) == [a]
    # a went away after it was picked; b and c stream, only b has a frame: wait for c.
    assert selector.select([b], live=[b, c]) is None


def test_a_camera_replaced_by_a_reload_is_not_held_by_its_predecessor(
    cameras: list[CameraSource],
) -> None:
    a = cameras[0]
    selector = BatchSelector(max_batch=2, timeout_s=10.0, clock=lambda: 100.0)
    assert selector.select([a], live=[a]) == [a]
    selector.forget("a")
    replaced = _camera("a")
    try:
        assert selector.select([replaced], live=[replaced]) == [replaced]
        # The old camera's batch takes its frame late: the new camera stays held.
        selector.assembled([a])
        assert selector.select([replaced], live=[replaced]) is None
    finally:
        replaced.stop()
