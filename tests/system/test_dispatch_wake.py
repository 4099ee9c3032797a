"""The dispatch loop is woken by frame arrivals: a real ``Pipeline`` (file cameras, the real
model on ONNX Runtime) whose loop would otherwise look again only after an hour keeps
processing frames, through a reload and a reader restart, and leaves no fd behind."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections.abc import Callable
from multiprocessing import resource_tracker
from pathlib import Path

import psutil
import pytest

import daemon.pipeline
from daemon.config.model import (
    AppConfig,
    CameraConfig,
    CaptureConfig,
    ModelConfig,
    MonitoringConfig,
)
from daemon.config.secrets import Secret
from daemon.infer.factory import load_backend
from daemon.monitor.metrics import DaemonMetrics
from daemon.monitor.stats import StatsCollector
from daemon.pipeline import Pipeline
from tests.system.test_sink import RecordingSink

# Waiting for the pipeline's output is bounded so a loop nobody wakes fails instead of hanging.
_DEADLINE_S = 60.0


def _processed(sink: RecordingSink, camera_id: str, after_seq: int = 0) -> int:
    return sum(1 for m, _, _ in sink.detections if m.camera_id == camera_id and m.seq > after_seq)


def _reader_pid(pipeline: Pipeline, camera_id: str) -> int | None:
    readers = pipeline.health().detail["readers"]
    assert isinstance(readers, dict)
    pid = readers.get(camera_id)
    return pid if isinstance(pid, int) else None


def test_only_frame_arrivals_wake_the_dispatch_loop(
    model_onnx: Path, videos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a wake-up the loop would not look at the cameras again for an hour.
    monkeypatch.setattr(daemon.pipeline, "_IDLE_WAIT_S", 3600.0)
    small = [v for v in videos if v.name.endswith("_360p.mp4")]
    first, second = (CameraConfig(id=f"cam{i}", url=Secret(str(v))) for i, v in enumerate(small))
    config = AppConfig(
        cameras=(first,),
        model=ModelConfig(path=model_onnx, max_batch=2),
        capture=CaptureConfig(reconnect_initial_s=0.3, reconnect_max_s=1.5),
        monitoring=MonitoringConfig(stats_interval_s=0.5, metrics_port=None),
        node="test",
    )
    backend = load_backend(config.model)
    sink = RecordingSink()
    # Started once per process by the first reader: not the pipeline's.
    resource_tracker.ensure_running()
    # Descriptors an earlier test left to the garbage collector are closed before counting.
    gc.collect()
    me = psutil.Process()
    fds = me.num_fds()
    pipeline = Pipeline(config, backend, sink, StatsCollector(), DaemonMetrics(sink.counters))
    reached: list[str] = []

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(pipeline.run(stop))

        async def until(what: str, done: Callable[[], bool]) -> bool:
            deadline = time.monotonic() + _DEADLINE_S
            while not done() and time.monotonic() < deadline and not running.done():
                await asyncio.sleep(0.1)
            if done():
                reached.append(what)
            return done()

        async def steps() -> None:
            pipeline.add_camera(first)
            if not await until("first", lambda: _processed(sink, first.id) >= 3):
                return
            # A reload: one camera out, another in; its reader gets the same channel.
            pipeline.remove_camera(first.id)
            pipeline.add_camera(second)
            if not await until("second", lambda: _processed(sink, second.id) >= 3):
                return
            # A reader killed and replaced by the watchdog: the new one signals too.
            killed = _reader_pid(pipeline, second.id)
            seen = max(m.seq for m, _, _ in sink.detections if m.camera_id == second.id)
            assert killed is not None
            os.kill(killed, signal.SIGKILL)
            await until(
                "restarted",
                lambda: (
                    _reader_pid(pipeline, second.id) not in (None, killed)
                    and _processed(sink, second.id, after_seq=seen) >= 3
                ),
            )

        await steps()
        stop.set()
        # The stop is seen at the next arrival; a loop nobody wakes is cancelled instead.
        await asyncio.wait_for(running, _DEADLINE_S)

    try:
        asyncio.run(main())
    finally:
        backend.close()
    assert reached == ["first", "second", "restarted"]
    # The channel closed with the readers, whose copies of it went with them.
    assert me.num_fds() == fds
