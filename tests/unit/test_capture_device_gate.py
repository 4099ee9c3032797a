"""``DeviceGate``: readers' device work shares it, a graph capture passes alone and first."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from daemon.capture.device_gate import DeviceGate, GateTimeout


def _start(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_capture_waits_for_work_and_holds_new_work_back() -> None:
    gate = DeviceGate()
    order: list[str] = []
    first_working, release_first = threading.Event(), threading.Event()
    waited: list[int] = []

    def first_reader() -> None:
        with gate.work():
            first_working.set()
            release_first.wait(5)
            order.append("first work done")

    def capturer() -> None:
        with gate.capture():
            order.append("capture")
            time.sleep(0.2)
            order.append("capture done")

    def second_reader() -> None:
        with gate.work(lambda: waited.append(1)):
            order.append("second work")

    readers = [_start(first_reader)]
    assert first_working.wait(5)
    capture = _start(capturer)
    time.sleep(0.1)
    # A capture is waiting: new work queues behind it, and it waits for the work in progress.
    readers.append(_start(second_reader))
    time.sleep(0.1)
    assert order == []
    release_first.set()
    for thread in [*readers, capture]:
        thread.join(5)
    assert order == ["first work done", "capture", "capture done", "second work"]
    # The held-back reader was told it was waiting (it beats its heartbeat then).
    assert waited


def test_work_passes_side_by_side() -> None:
    gate = DeviceGate()
    inside = threading.Barrier(3, timeout=5)

    def reader() -> None:
        with gate.work():
            inside.wait()

    threads = [_start(reader) for _ in range(3)]
    for thread in threads:
        thread.join(5)
    assert not inside.broken


def test_a_capture_gives_up_on_work_that_never_leaves() -> None:
    gate = DeviceGate()
    inside, leave = threading.Event(), threading.Event()

    def stuck_reader() -> None:
        with gate.work():
            inside.set()
            leave.wait(5)

    reader = _start(stuck_reader)
    assert inside.wait(5)
    with pytest.raises(GateTimeout), gate.capture(wait_s=0.2):
        pass
    # The failed capture holds nobody back: new work passes beside the stuck one.
    with gate.work():
        pass
    leave.set()
    reader.join(5)
