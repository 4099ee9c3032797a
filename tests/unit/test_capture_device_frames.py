"""``DeviceFrames``, the newest-frame store of an NVDEC camera, on its own.

The store never looks inside a frame beyond its shape, so numpy arrays stand in for the CUDA
tensors the reader thread copies in (the reader itself runs in ``test_nvdec_gpu.py``).
"""

from __future__ import annotations

import time

import numpy as np

from daemon.capture.nvdec import SLOTS, DeviceFrames


def _frame(value: int) -> np.ndarray:
    return np.full((4, 6, 3), value, np.uint8)


def _write(frames: DeviceFrames, writer: int, value: int, ts: float = 1.0) -> int | None:
    index = frames.free_slot(writer)
    if index is not None:
        frames.publish(writer, index, _frame(value), ts)
    return index


def test_newest_frame_wins_and_overwritten_frames_count_as_dropped() -> None:
    frames = DeviceFrames("cam")
    writer = frames.new_writer()
    assert frames.pending_since() is None
    for value in (1, 2, 3):
        _write(frames, writer, value, ts=float(value))
    assert frames.pending_since() == 3.0
    with frames.acquire_latest() as taken:
        assert taken is not None
        meta, image = taken
        assert (meta.camera_id, meta.seq, meta.width, meta.height) == ("cam", 3, 6, 4)
        assert int(image[0, 0, 0]) == 3
    assert frames.pending_since() is None
    with frames.acquire_latest() as again:
        assert again is None
    counts = frames.counts()
    assert (counts.frames_read, counts.frames_dropped) == (3, 2)


def test_a_frame_being_batched_is_never_written() -> None:
    frames = DeviceFrames("cam")
    writer = frames.new_writer()
    _write(frames, writer, 1)
    with frames.acquire_latest() as taken:
        assert taken is not None
        held = taken[1]
        # Many frames arrive while the batch holds its frame: they rotate through the others.
        for value in range(2, 2 + 4 * SLOTS):
            assert _write(frames, writer, value) is not None
        assert int(held[0, 0, 0]) == 1
    with frames.acquire_latest() as newest:
        assert newest is not None
        assert int(newest[1][0, 0, 0]) == 1 + 4 * SLOTS


def test_with_every_slot_busy_a_new_frame_is_dropped() -> None:
    frames = DeviceFrames("cam")
    writer = frames.new_writer()
    # Two batches hold one frame each and a third frame is the newest: nothing is free.
    with frames.acquire_latest() as none:
        assert none is None
    _write(frames, writer, 1)
    with frames.acquire_latest() as first:
        _write(frames, writer, 2)
        with frames.acquire_latest() as second:
            assert first is not None
            assert second is not None
            _write(frames, writer, 3)
            assert frames.free_slot(writer) is None
            assert frames.counts().frames_dropped == 1
    assert frames.free_slot(writer) is not None


def test_only_the_current_reader_writes_and_counts() -> None:
    frames = DeviceFrames("cam")
    old = frames.new_writer()
    new = frames.new_writer()
    assert frames.free_slot(old) is None
    frames.publish(old, 0, _frame(9), 1.0)
    frames.count(old, reconnects=1)
    frames.alive_until(old, time.time() + 100)
    assert frames.pending_since() is None
    assert frames.counts().reconnects == 0
    assert frames.heartbeat() is None
    frames.count(new, reconnects=1, frames_corrupt=2)
    assert (frames.counts().reconnects, frames.counts().frames_corrupt) == (1, 2)


def test_heartbeat_stops_at_the_readers_deadline() -> None:
    frames = DeviceFrames("cam")
    writer = frames.new_writer()
    frames.alive_until(writer, time.time() + 60)
    beat = frames.heartbeat()
    assert beat is not None
    assert abs(beat - time.time()) < 1
    deadline = time.time() - 30
    frames.alive_until(writer, deadline)
    assert frames.heartbeat() == deadline


def test_close_stops_frames() -> None:
    frames = DeviceFrames("cam")
    writer = frames.new_writer()
    _write(frames, writer, 1)
    frames.close()
    assert frames.pending_since() is None
    assert frames.free_slot(writer) is None
