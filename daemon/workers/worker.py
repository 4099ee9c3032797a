"""One pipeline worker process: its own backend, batches and readers for a share of the cameras.

The process runs the same ``Pipeline`` as a single-process daemon, publishing through a
``RelaySink`` to the service. It takes commands (add/remove a camera, stop) from a pipe; when
that pipe closes (the service is gone) it stops. SIGTERM and SIGINT, which systemd and a
terminal send to the whole process group, stop it the same way: drain the in-flight batches,
report once more, exit. Reloads are the service's job, so SIGHUP is ignored here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection

from daemon.config.model import AppConfig, CameraConfig
from daemon.infer.factory import load_backend
from daemon.logs import setup_child_logging
from daemon.monitor.drift import open_drift_monitor
from daemon.monitor.metrics import DaemonMetrics
from daemon.monitor.stats import StatsCollector
from daemon.pipeline import Pipeline
from daemon.publish.topics import Topics
from daemon.workers.relay import AddCamera, Command, RelaySink, RemoveCamera, Stop, WorkerStatus

log = logging.getLogger(__name__)

# How often a worker reports its status; the pool calls a worker silent for a few of these
# unhealthy (see daemon/workers/pool.py).
STATUS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is started with."""

    index: int
    # The service's configuration without the MQTT credentials: a worker never talks to the
    # broker.
    config: AppConfig
    cameras: tuple[CameraConfig, ...]


def run_worker(spec: WorkerSpec, results: Connection, commands: Connection) -> None:
    """Entry point of the worker process (spawned): load the backend, run the pipeline."""
    setup_child_logging(sys.stderr, worker=spec.index)
    try:
        backend = load_backend(spec.config.model)
        drift = open_drift_monitor(spec.config.model, backend)
    except Exception:
        # The pool sees the exit, marks the cameras down and tries again later.
        log.exception("pipeline worker could not load its backend")
        return
    topics = Topics(spec.config.mqtt.topic_prefix, spec.config.node)
    sink = RelaySink(results, topics)
    metrics = DaemonMetrics()
    pipeline = Pipeline(spec.config, backend, sink, StatsCollector(), metrics, drift=drift)
    try:
        asyncio.run(_serve(spec, pipeline, sink, metrics, commands))
    finally:
        backend.close()


async def _serve(
    spec: WorkerSpec,
    pipeline: Pipeline,
    sink: RelaySink,
    metrics: DaemonMetrics,
    commands: Connection,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    ready = threading.Event()

    def status() -> WorkerStatus:
        return WorkerStatus(
            ready.is_set(), pipeline.health(), list(metrics.registry.collect()),
            pipeline.latest_stats(),
        )  # fmt: skip

    def apply(command: Command) -> None:
        if isinstance(command, AddCamera):
            pipeline.add_camera(command.camera)
        elif isinstance(command, RemoveCamera):
            pipeline.remove_camera(command.camera_id)
        else:
            stop.set()

    def listen() -> None:
        while True:
            try:
                command: Command = commands.recv()
            except (EOFError, OSError):
                command = Stop()
            try:
                loop.call_soon_threadsafe(apply, command)
            except RuntimeError:  # the loop is closed: the worker stopped on a signal
                return
            if isinstance(command, Stop):
                return

    async def report() -> None:
        while True:
            sink.send(status())
            await asyncio.sleep(STATUS_INTERVAL_S)

    def on_ready() -> None:
        ready.set()
        sink.send(status())

    for camera in spec.cameras:
        pipeline.add_camera(camera)
    threading.Thread(target=listen, name="worker-commands", daemon=True).start()
    reporter = asyncio.create_task(report(), name="worker-status")
    log.info("pipeline worker started", extra={"cameras": len(spec.cameras)})
    try:
        await pipeline.run(stop, on_ready)
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        sink.send(status())
        log.info("pipeline worker stopped")
