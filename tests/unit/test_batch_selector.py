"""Which cameras the batch selector picks while earlier batches are still taking their frames
(several batches in flight)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from daemon.batch.batcher import BatchSelector
from daemon.capture.source import CameraSource
from daemon.config.model import CameraConfig, CaptureConfig
from daemon.config.secrets import Secret


@pytest.fixture
def cameras() -> Iterator[list[CameraSource]]:
    capture = CaptureConfig()
    sources = [CameraSource(CameraConfig(id=i, url=Secret("/none.mp4")), capture) for i in "abcd"]
    yield sources
    for source in sources:
        source.stop()


def test_a_camera_is_not_picked_again_before_its_batch_took_the_frame(
    cameras: list[CameraSource],
) -> None:
    a, b, c, d = cameras
    selector = BatchSelector(max_batch=2, timeout_s=10.0, clock=lambda: 100.0)
    first = selector.select([a, b, c, d], live_count=4)
    assert first == [a, b]
    # a's and b's frames are still unconsumed until the first batch assembles: the next
    # batch is the other two, full at once (a and b are not waited for).
    assert selector.select([a, b, c, d], live_count=4) == [c, d]
    assert selector.select([a, b, c, d], live_count=4) is None
    selector.assembled(["a", "b"])
    assert selector.select([a, b, c, d], live_count=4) == [a, b]


def test_the_rest_of_the_cameras_make_a_full_batch_without_waiting_for_the_held_ones(
    cameras: list[CameraSource],
) -> None:
    a, b, c, _ = cameras
    selector = BatchSelector(max_batch=4, timeout_s=10.0, clock=lambda: 100.0)
    assert selector.select([a, b], live_count=3) is None  # c streams but has no frame yet
    assert selector.select([a, b, c], live_count=3) == [a, b, c]
    selector.assembled(["a", "b"])
    # c is held; a and b are every camera that can deliver now: no deadline to wait for.
    assert selector.select([a, b, c], live_count=3) == [a, b]


def test_a_forgotten_camera_is_no_longer_held(cameras: list[CameraSource]) -> None:
    a = cameras[0]
    selector = BatchSelector(max_batch=2, timeout_s=10.0, clock=lambda: 100.0)
    assert selector.select([a], live_count=1) == [a]
    selector.forget("a")  # removed by a reload, then added again under the same id
    assert selector.select([a], live_count=1) == [a]
