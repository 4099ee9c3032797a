"""Cameras sharded across pipeline worker processes (``model.workers`` > 1).

One Python process tops out well before a data-centre GPU is busy, and more batches in
flight inside that process made each batch slower, not the total faster (docs/ARCHITECTURE.md
has the measurements). So each worker is a whole pipeline (readers, batching, its own
backend and CUDA context, tracking) for a share of the cameras,
and the service process keeps what must exist once: the MQTT publisher, the metrics endpoint,
systemd notification and config reloads. Batch and stats semantics are those of one pipeline,
per worker; messages reach subscribers exactly as from a single process
(``daemon.workers.relay``).

The pool is honest about its workers: ``/healthz`` is ok only while every worker is alive,
warm, healthy and reporting; a worker that exits, or stops reporting and is killed for it,
is logged, its cameras are marked ``down`` with the reason, and it is started again with a
growing delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from daemon.capture.protocol import SPAWN
from daemon.capture.state import CameraState
from daemon.config.model import AppConfig, CameraConfig
from daemon.monitor.merged import MergedMetrics, Snapshot
from daemon.monitor.metrics import Health
from daemon.publish.camera_stats import CameraStats
from daemon.publish.sink import Publisher
from daemon.workers.relay import AddCamera, Command, RemoveCamera, Stop, WorkerStatus, deliver
from daemon.workers.worker import STATUS_INTERVAL_S, WorkerSpec, run_worker

log = logging.getLogger(__name__)

# A worker that has not reported for this long is unhealthy (its loop or its pipe is stuck),
# and after the second bound it is killed and restarted.
SILENT_AFTER_S = 10 * STATUS_INTERVAL_S
KILL_SILENT_AFTER_S = 30 * STATUS_INTERVAL_S
# Restart delays after a worker exits: doubling from the first, capped.
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
# How long a stopping worker may take to drain and exit before it is terminated.
STOP_TIMEOUT_S = 15.0
_POLL_S = 0.2


class _Worker:
    """The service's handle on one worker process (state guarded by the pool's lock)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.cameras: dict[str, CameraConfig] = {}
        self.process: BaseProcess | None = None
        self.commands: Connection | None = None
        self.relay: threading.Thread | None = None
        self.status: WorkerStatus | None = None
        self.reported = 0.0
        self.restarts = 0
        self.restart_at: float | None = None
        # Why the service killed the running process, if it did.
        self.killed: str | None = None

    def send(self, command: Command) -> None:
        if self.commands is not None:
            with contextlib.suppress(OSError):
                self.commands.send(command)


class WorkerPool:
    """Runs the cameras on ``count`` worker processes; the service's pipeline when sharded."""

    def __init__(self, config: AppConfig, publisher: Publisher, count: int) -> None:
        # A worker never talks to the broker: it does not get the credentials.
        mqtt = dataclasses.replace(config.mqtt, username=None, password=None)
        self._config = dataclasses.replace(config, mqtt=mqtt)
        self._publisher = publisher
        self._workers = [_Worker(i) for i in range(count)]
        self._lock = threading.Lock()
        self._running = False
        self._stopping = False
        self.metrics = MergedMetrics(self._snapshots)

    # -- cameras -------------------------------------------------------------------------

    def add_camera(self, camera: CameraConfig) -> None:
        """Give ``camera`` to the worker with the fewest cameras."""
        worker = min(self._workers, key=lambda w: len(w.cameras))
        worker.cameras[camera.id] = camera
        if self._running:
            worker.send(AddCamera(camera))
        log.info("camera assigned", extra={"camera": camera.id, "worker": worker.index})

    def remove_camera(self, camera_id: str) -> None:
        for worker in self._workers:
            if worker.cameras.pop(camera_id, None) is None or not self._running:
                continue
            process = worker.process
            if process is not None and process.is_alive():
                worker.send(RemoveCamera(camera_id))
            else:
                # Nobody will report it gone: clear its retained state here.
                self._publisher.remove_camera(camera_id)

    # -- health --------------------------------------------------------------------------

    def healthy(self) -> bool:
        """Every worker is alive, reporting and healthy (gates the systemd watchdog)."""
        return all(self._worker_ok(w, require_ready=False) for w in self._workers)

    def health(self) -> Health:
        """``/healthz``: every worker's part, and the cameras and readers of all of them."""
        cameras: dict[str, object] = {}
        readers: dict[str, object] = {}
        workers = []
        with self._lock:
            for w in self._workers:
                status = w.status
                detail = dict(status.health.detail) if status is not None else {}
                # Until a (re)started worker reports, its cameras are what the service knows.
                alive = w.process is not None and w.process.is_alive()
                unknown = CameraState.STARTING if alive else CameraState.DOWN
                cameras.update(dict.fromkeys(w.cameras, unknown.value))
                cameras.update(_mapping(detail.pop("cameras", {})))
                readers.update(_mapping(detail.pop("readers", {})))
                workers.append({
                    "worker": w.index,
                    "camera_ids": sorted(w.cameras),
                    "pid": w.process.pid if w.process is not None else None,
                    "alive": alive,
                    "healthy": self._worker_ok(w, require_ready=True),
                    "seconds_since_report": round(time.monotonic() - w.reported, 1),
                    "restarts": w.restarts,
                    **detail,
                })  # fmt: skip
        warm = all(w.status is not None and w.status.ready for w in self._workers)
        ok = warm and all(entry["healthy"] for entry in workers)
        detail = {"warm": warm, "workers": workers, "cameras": cameras, "readers": readers}
        return Health(ok, detail)

    def _worker_ok(self, w: _Worker, *, require_ready: bool) -> bool:
        status, process = w.status, w.process
        if process is None or not process.is_alive() or status is None:
            return False
        if time.monotonic() - w.reported > SILENT_AFTER_S:
            return False
        return status.health.healthy or (not require_ready and not status.ready)

    def latest_stats(self) -> dict[str, CameraStats]:
        """Each camera's stats over its worker's last closed monitoring interval."""
        merged: dict[str, CameraStats] = {}
        with self._lock:
            for w in self._workers:
                if w.status is not None:
                    merged.update(w.status.stats)
        return merged

    def _snapshots(self) -> list[Snapshot]:
        with self._lock:
            return [w.status.metrics for w in self._workers if w.status is not None]

    # -- running -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None] = lambda: None) -> None:
        """Start the workers, call ``on_ready`` once all are warm, restart any that exits,
        and when ``stop`` is set stop them all (each drains its in-flight batches)."""
        self._running = True
        for worker in self._workers:
            self._start(worker)
        ready_told = False
        try:
            while not stop.is_set():
                if not ready_told and all(
                    w.status is not None and w.status.ready for w in self._workers
                ):
                    on_ready()
                    ready_told = True
                for worker in self._workers:
                    self._supervise(worker)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _POLL_S)
        finally:
            self._stopping = True
            await asyncio.get_running_loop().run_in_executor(None, self._stop_all)

    def _start(self, worker: _Worker) -> None:
        spec = WorkerSpec(worker.index, self._config, tuple(worker.cameras.values()))
        results, child_results = SPAWN.Pipe(duplex=True)
        child_commands, commands = SPAWN.Pipe(duplex=False)
        process = SPAWN.Process(
            target=run_worker, args=(spec, child_results, child_commands),
            name=f"edgewatch-worker-{worker.index}",
        )  # fmt: skip
        process.start()
        # Our copies of the child's ends: closed, so a dead worker reads as EOF.
        child_results.close()
        child_commands.close()
        with self._lock:
            worker.process, worker.commands, worker.status = process, commands, None
            worker.reported = time.monotonic()
            worker.restart_at = None
        worker.relay = threading.Thread(
            target=self._relay, args=(worker, process, results),
            name=f"worker-{worker.index}-relay",
            daemon=True,
        )  # fmt: skip
        worker.relay.start()
        log.info(
            "pipeline worker starting",
            extra={"worker": worker.index, "pid": process.pid, "cameras": len(worker.cameras)},
        )

    def _relay(self, worker: _Worker, process: BaseProcess, results: Connection) -> None:
        """Thread: everything one worker sends, until its end of the pipe closes."""
        while True:
            try:
                message = results.recv()
            except (EOFError, OSError):
                return
            if not deliver(message, self._publisher, results) and isinstance(message, WorkerStatus):
                with self._lock:
                    worker.status = message
                    worker.reported = time.monotonic()

    def _supervise(self, worker: _Worker) -> None:
        if self._stopping:
            return
        process, now = worker.process, time.monotonic()
        if process is None:
            if worker.restart_at is not None and now >= worker.restart_at:
                self._start(worker)
            return
        if process.is_alive():
            # A worker that reported once and then went silent is wedged (stopped, deadlocked,
            # its loop blocked): killed, it is restarted like one that died. Before its first
            # report it may still be loading (an engine build takes minutes).
            silent = now - worker.reported
            if worker.status is not None and silent > KILL_SILENT_AFTER_S and not worker.killed:
                worker.killed = f"killed after {silent:.0f} s without a report"
                log.error("pipeline worker silent; killing it",
                          extra={"worker": worker.index, "silent_s": round(silent, 1)})  # fmt: skip
                process.kill()
            return
        code = process.exitcode
        delay = min(RESTART_MAX_S, RESTART_FIRST_S * 2**worker.restarts)
        reason = f"pipeline worker {worker.index} exited (status {code})"
        if worker.killed:
            reason += f", {worker.killed}"
        log.error(
            "pipeline worker exited; restarting it",
            extra={"worker": worker.index, "exit_code": code, "restart_in_s": delay},
        )
        for camera_id in worker.cameras:
            self._publisher.publish_state(camera_id, CameraState.DOWN, reason)
        with self._lock:
            worker.process = None
            worker.commands = None
            worker.killed = None
            # Its metrics and stats ended with it; its cameras read as down until it is back.
            worker.status = None
            worker.restarts += 1
            worker.restart_at = time.monotonic() + delay

    def _stop_all(self) -> None:
        """Tell every worker to stop, wait for them (bounded), then for their last messages."""
        for worker in self._workers:
            worker.send(Stop())
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in self._workers:
            process = worker.process
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("pipeline worker did not stop in time; terminating it",
                          extra={"worker": worker.index})  # fmt: skip
                process.terminate()
                process.join(2.0)
            if worker.relay is not None:
                worker.relay.join(2.0)


def _mapping(value: object) -> dict[str, object]:
    return dict(value) if isinstance(value, dict) else {}
