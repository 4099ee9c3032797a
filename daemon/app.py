"""Service lifecycle: start-up order, signals, hot reload, graceful shutdown.

Start-up: model -> broker connection -> cameras -> metrics endpoint -> warm-up -> READY=1.
The endpoint opens after the cameras are added, so ``/healthz`` never shows a daemon without
its cameras.
SIGTERM/SIGINT: stop taking batches, drain the in-flight ones, publish ``offline``, exit 0.
SIGHUP or a changed config file: re-validate; apply camera changes without touching the
unchanged cameras; an invalid file is rejected with its errors and the running config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry

from daemon.config.load import ConfigError, diff_cameras, load_config
from daemon.config.model import AppConfig, CameraConfig
from daemon.infer.factory import load_backend
from daemon.infer.model_file import class_names_of
from daemon.monitor.drift import open_drift_monitor
from daemon.monitor.metrics import (
    DaemonMetrics,
    Health,
    MetricsServer,
    PublisherMetrics,
    publisher_health,
)
from daemon.monitor.stats import StatsCollector, render_fps_table
from daemon.monitor.systemd import SystemdNotifier
from daemon.pipeline import Pipeline
from daemon.publish.camera_stats import CameraStats
from daemon.publish.mqtt import MqttPublisher
from daemon.publish.sink import Publisher
from daemon.track.checks import filter_problems
from daemon.workers.pool import WorkerPool

log = logging.getLogger(__name__)

_CONFIG_WATCH_S = 2.0


class Runner(Protocol):
    """What runs the cameras: one ``Pipeline`` in this process, or a ``WorkerPool``."""

    def add_camera(self, camera: CameraConfig) -> None: ...

    def remove_camera(self, camera_id: str) -> None: ...

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None]) -> None: ...

    def healthy(self) -> bool: ...

    def health(self) -> Health: ...

    def latest_stats(self) -> dict[str, CameraStats]: ...


class Service:
    """The daemon process: owns the runner and everything around it."""

    def __init__(
        self,
        config: AppConfig,
        runner: Runner,
        sink: Publisher,
        registry: CollectorRegistry,
        model: LoadedModel,
        *,
        print_table: Callable[[str], None] | None = None,
        env: Mapping[str, str] | None = None,
        started: float | None = None,
    ) -> None:
        """``sink``: where results go (started and stopped here); ``registry``: what
        ``/metrics`` serves. ``env``: the environment reloads read ``mqtt.password_env``
        from (default: the process's). ``started``: the ``time.monotonic()`` the start-up
        began at (model loading included; default: now)."""
        self._started = time.monotonic() if started is None else started
        self._config = config
        self._env = env
        self._model = model
        self._print_table = print_table
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._notifier = SystemdNotifier()
        self._sink = sink
        self._runner = runner
        self._metrics = _bind_metrics(config, registry, self.health)

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def run(self, duration_s: float | None = None) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

        self._sink.start()
        for camera in self._config.enabled_cameras:
            self._runner.add_camera(camera)
        if self._metrics is not None:
            self._metrics.start()

        helpers = [
            asyncio.create_task(self._watchdog(), name="watchdog"),
            asyncio.create_task(self._watch_config(), name="config-watch"),
        ]
        if self._print_table is not None:
            helpers.append(asyncio.create_task(self._table(), name="fps-table"))
        if duration_s is not None:
            loop.call_later(duration_s, self.request_stop)
        try:
            await self._runner.run(self._stop, self._ready)
        finally:
            self._notifier.stopping()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await loop.run_in_executor(None, self._sink.stop, 5.0)
            if self._metrics is not None:
                self._metrics.stop()
            self._notifier.close()
            self._model.close()
            log.info("edgewatch stopped")
        return 0

    def _ready(self) -> None:
        """The backend is warm for the cameras' batch shapes: tell systemd and the log."""
        self._notifier.ready()
        self._notifier.status(f"{len(self._config.enabled_cameras)} cameras, {self._model.label}")
        log.info(
            "edgewatch running",
            extra={
                "node": self._config.node,
                "backend": self._model.label,
                "workers": self._config.model.workers,
                "cameras": len(self._config.enabled_cameras),
                "startup_s": round(time.monotonic() - self._started, 2),
            },
        )

    def healthy(self) -> bool:
        """The runner makes progress and the publisher's pump works (the watchdog's gate)."""
        return self._runner.healthy() and self._sink.counters().pump_ok

    def health(self) -> Health:
        """What ``/healthz`` reports: the runner's part, and whether messages can leave
        (broker reachable, pump working)."""
        runner = self._runner.health()
        counters = self._sink.counters()
        return Health(
            runner.healthy and counters.pump_ok and counters.can_publish,
            {**runner.detail, "mqtt": publisher_health(counters)},
        )

    async def _watchdog(self) -> None:
        """Ping systemd only while the pipeline makes progress, so a wedge gets us restarted."""
        interval = self._notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval / 2)
            if self.healthy():
                self._notifier.watchdog()

    async def _table(self) -> None:
        assert self._print_table is not None
        while True:
            await asyncio.sleep(self._config.monitoring.stats_interval_s)
            latest = self._runner.latest_stats()
            if latest:
                self._print_table(render_fps_table(latest))

    async def _watch_config(self) -> None:
        path = self._config.source
        last_mtime = _mtime(path)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), _CONFIG_WATCH_S)
            mtime = _mtime(path)
            if self._reload.is_set() or mtime != last_mtime:
                self._reload.clear()
                last_mtime = mtime
                try:
                    await self._apply_reload()
                except Exception:
                    # An unexpected failure must not end the watch: later edits still apply.
                    log.exception("config reload failed")

    async def _apply_reload(self) -> None:
        path = self._config.source
        if path is None:
            return
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, load_config, path, self._env)
        except ConfigError as err:
            for problem in err.problems:
                log.error(
                    "config rejected, keeping the running one", extra={"problem": str(problem)}
                )
            return
        diff = diff_cameras(self._config, new)
        unknown = filter_problems(
            (*diff.added, *diff.changed), self._model.class_names, self._config.tracking
        )
        for text in unknown:
            log.error("config rejected, keeping the running one", extra={"problem": text})
        if unknown:
            return
        for camera_id in diff.removed:
            self._runner.remove_camera(camera_id)
        for camera in diff.changed:
            self._runner.remove_camera(camera.id)
            self._runner.add_camera(camera)
        for camera in diff.added:
            self._runner.add_camera(camera)
        for section in diff.restart_required:
            log.warning("config change needs a restart to take effect", extra={"section": section})
        self._config = new
        log.info(
            "config reloaded",
            extra={
                "added": len(diff.added),
                "removed": len(diff.removed),
                "changed": len(diff.changed),
            },
        )


def withhold_secret_variables(config: AppConfig) -> dict[str, str]:
    """Remove the variable holding the MQTT password (``mqtt.password_env``) from this
    process's environment, so no child process (a camera reader decoding untrusted streams)
    inherits it. Returns the environment as it was, for reloads. Call it before any thread
    starts: the C environment is not thread-safe."""
    env = dict(os.environ)
    if config.mqtt.password is not None:
        password = config.mqtt.password.reveal()
        for name in [n for n, value in env.items() if value == password]:
            del os.environ[name]
    return env


class StartupError(Exception):
    """The daemon cannot start for reasons the operator must fix; ``problems`` says which,
    one line each."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _bind_metrics(
    config: AppConfig, registry: CollectorRegistry, health: Callable[[], Health]
) -> MetricsServer | None:
    """The metrics endpoint, bound (not serving yet) before anything else starts."""
    monitoring = config.monitoring
    if monitoring.metrics_port is None:
        return None
    try:
        return MetricsServer(monitoring.metrics_host, monitoring.metrics_port, registry, health)
    except OSError as exc:
        address = f"{monitoring.metrics_host}:{monitoring.metrics_port}"
        raise StartupError(
            f"monitoring: cannot listen on {address}: {exc.strerror or exc} "
            "(is another edgewatch or program using the port? set monitoring.metrics_port)"
        ) from None


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return path.stat().st_mtime
    except OSError:
        return None


@dataclass(frozen=True)
class LoadedModel:
    """What the service knows of the model: its classes, a label for logs and systemd,
    and how to release it (the backend, when it lives in this process)."""

    class_names: tuple[str, ...]
    label: str
    close: Callable[[], None] = lambda: None


def serve(config: AppConfig, duration_s: float | None, table: bool) -> int:
    """Load the model (here, or in each pipeline worker), then run the service until a
    signal or ``duration_s``."""
    started = time.monotonic()
    env = withhold_secret_variables(config)
    workers = config.model.workers
    backend = load_backend(config.model) if workers == 1 else None
    if backend is not None:
        model = LoadedModel(backend.class_names, backend.name, backend.close)
    else:
        names = class_names_of(config.model.path)
        model = LoadedModel(names, f"{config.model.backend.value} in {workers} workers")
    problems = filter_problems(config.enabled_cameras, model.class_names, config.tracking)
    if problems:
        model.close()
        raise StartupError(*(f"config: {problem}" for problem in problems))
    drift = open_drift_monitor(config.model, backend) if backend is not None else None

    def print_table(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    async def main() -> int:
        sink = MqttPublisher(config.mqtt, config.node)
        runner: Runner
        if backend is not None:
            metrics = DaemonMetrics(sink.counters)
            registry = metrics.registry
            runner = Pipeline(config, backend, sink, StatsCollector(), metrics, drift=drift)
        else:
            pool = WorkerPool(config, sink, workers)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(PublisherMetrics(sink.counters))
            registry.register(pool.metrics)
            runner = pool
        service = Service(
            config, runner, sink, registry, model,
            print_table=print_table if table else None, env=env, started=started,
        )  # fmt: skip
        return await service.run(duration_s)

    try:
        return asyncio.run(main())
    except StartupError:
        model.close()
        raise
