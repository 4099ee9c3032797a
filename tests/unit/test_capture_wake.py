"""The frame-arrival channel on real sockets and a real event loop; the NVDEC store's and the
batch selector's part in it. (A reader process signalling it: ``test_capture.py``; a pipeline
woken by it: ``tests/system/test_dispatch_wake.py``.)"""

from __future__ import annotations

import asyncio
import socket
import threading

import numpy as np
import psutil

from daemon.batch.batcher import BatchSelector
from daemon.capture.nvdec import DeviceFrames
from daemon.capture.source import CameraSource
from daemon.capture.wake import FrameArrivals, WakeSender
from daemon.config.model import CameraConfig, CaptureConfig
from daemon.config.secrets import Secret


def _received(receiver: socket.socket) -> int:
    receiver.setblocking(False)
    total = 0
    try:
        while chunk := receiver.recv(4096):
            total += len(chunk)
    except BlockingIOError:
        pass
    return total


def test_a_signal_from_another_thread_wakes_the_waiting_loop() -> None:
    arrivals = FrameArrivals()

    async def main() -> list[bool]:
        woken = []
        for _ in range(3):
            arrivals.clear()
            signaller = threading.Thread(target=arrivals.sender.signal)
            signaller.start()
            # Only the signal can end this wait.
            woken.append(await arrivals.wait(3600.0))
            signaller.join()
        return woken

    try:
        assert asyncio.run(main()) == [True, True, True]
    finally:
        arrivals.close()


def test_an_arrival_before_the_wait_is_not_lost_and_clear_forgets_it() -> None:
    arrivals = FrameArrivals()

    async def main() -> tuple[bool, bool]:
        arrivals.sender.signal()
        await asyncio.sleep(0)  # the loop notices the byte
        arrived = await arrivals.wait(3600.0)
        arrivals.clear()
        return arrived, await arrivals.wait(0.01)

    try:
        assert asyncio.run(main()) == (True, False)
    finally:
        arrivals.close()


def test_notify_wakes_the_wait_and_an_arrival_already_there_still_yields_to_the_loop() -> None:
    arrivals = FrameArrivals()

    async def main() -> tuple[bool, list[int]]:
        loop = asyncio.get_running_loop()
        # Only the notify can end this wait.
        loop.call_later(0.01, arrivals.notify)
        woken = await arrivals.wait(3600.0)
        others: list[int] = []
        loop.call_soon(others.append, 1)
        arrivals.notify()
        # Returns at once, but lets the loop run what is due first.
        await arrivals.wait(3600.0)
        return woken, others

    try:
        assert asyncio.run(main()) == (True, [1])
    finally:
        arrivals.close()


def test_signal_never_blocks_or_raises_on_a_full_or_closed_channel() -> None:
    receiver, sender = socket.socketpair()
    wake = WakeSender(sender)
    capacity = sender.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    for _ in range(2 * capacity):
        wake.signal()
    assert 0 < _received(receiver) < 2 * capacity
    receiver.close()
    wake.signal()  # the pipeline's end is gone
    wake.close()
    wake.signal()  # this end is gone too


def test_close_leaves_no_fd() -> None:
    me = psutil.Process()

    async def cycle() -> None:
        arrivals = FrameArrivals()
        arrivals.sender.signal()
        await arrivals.wait(3600.0)
        arrivals.close()
        arrivals.close()  # idempotent

    async def main() -> tuple[int, int]:
        await cycle()
        fds = me.num_fds()
        for _ in range(5):
            await cycle()
        return fds, me.num_fds()

    before, after = asyncio.run(main())
    assert after == before


def test_nvdec_frames_signal_each_publish_of_the_current_reader_only() -> None:
    receiver, sender = socket.socketpair()
    frames = DeviceFrames("cam", WakeSender(sender))
    image = np.zeros((4, 6, 3), np.uint8)
    stale = frames.new_writer()
    writer = frames.new_writer()
    for _ in range(5):
        index = frames.free_slot(writer)
        assert index is not None
        frames.publish(writer, index, image, 1.0)
    frames.publish(stale, 0, image, 1.0)  # an abandoned reader
    frames.close()
    frames.publish(writer, 0, image, 1.0)  # after the camera stopped
    assert _received(receiver) == 5
    receiver.close()
    sender.close()


def test_the_selector_says_when_a_filling_batch_is_due() -> None:
    now = [100.0]
    # Binary fractions, so the arithmetic is exact.
    selector = BatchSelector(max_batch=4, timeout_s=0.5, clock=lambda: now[0])
    capture = CaptureConfig()
    a, b = (CameraSource(CameraConfig(id=i, url=Secret("/none.mp4")), capture) for i in "ab")
    try:
        assert selector.due_in() is None
        assert selector.select([a], live=[a, b]) is None
        assert selector.due_in() == 0.5
        now[0] += 0.25
        assert selector.due_in() == 0.25
        now[0] += 0.5
        assert selector.due_in() == 0.0
        assert selector.select([a], live=[a, b]) == [a]
        assert selector.due_in() is None
        selector.assembled([a])
        assert selector.select([a, b], live=[a, b]) == [b, a]  # full: no deadline
        assert selector.due_in() is None
    finally:
        a.stop()
        b.stop()
