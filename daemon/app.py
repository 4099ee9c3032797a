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
from pathlib import Path

from daemon.config.load import ConfigError, diff_cameras, load_config
from daemon.config.model import AppConfig
from daemon.infer.backend import Backend
from daemon.infer.factory import load_backend
from daemon.monitor.drift import DriftMonitor, open_drift_monitor
from daemon.monitor.metrics import DaemonMetrics, MetricsServer
from daemon.monitor.stats import StatsCollector, render_fps_table
from daemon.monitor.systemd import SystemdNotifier
from daemon.pipeline import Pipeline
from daemon.publish.mqtt import MqttPublisher
from daemon.publish.sink import Sink
from daemon.track.checks import filter_problems

log = logging.getLogger(__name__)

_CONFIG_WATCH_S = 2.0


class Service:
    """The daemon process: owns the pipeline and everything around it."""

    def __init__(
        self,
        config: AppConfig,
        backend: Backend,
        sink: Sink,
        *,
        print_table: Callable[[str], None] | None = None,
        drift: DriftMonitor | None = None,
        env: Mapping[str, str] | None = None,
        started: float | None = None,
    ) -> None:
        """``sink``: where results go (started and stopped here). ``env``: the environment
        reloads read ``mqtt.password_env`` from (default: the process's). ``started``: the
        ``time.monotonic()`` the start-up began at (model loading included; default: now)."""
        self._started = time.monotonic() if started is None else started
        self._config = config
        self._env = env
        self._backend = backend
        self._print_table = print_table
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._notifier = SystemdNotifier()
        self._sink = sink
        self._metrics_registry = DaemonMetrics(sink.counters)
        self._pipeline = Pipeline(
            config, backend, sink, StatsCollector(), self._metrics_registry, drift=drift
        )
        self._metrics = _bind_metrics(config, self._metrics_registry, self._pipeline)

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
            self._pipeline.add_camera(camera)
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
            await self._pipeline.run(self._stop, self._ready)
        finally:
            self._notifier.stopping()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await loop.run_in_executor(None, self._sink.stop, 5.0)
            if self._metrics is not None:
                self._metrics.stop()
            self._notifier.close()
            self._backend.close()
            log.info("edgewatch stopped")
        return 0

    def _ready(self) -> None:
        """The backend is warm for the cameras' batch shapes: tell systemd and the log."""
        self._notifier.ready()
        self._notifier.status(f"{len(self._config.enabled_cameras)} cameras, {self._backend.name}")
        log.info(
            "edgewatch running",
            extra={
                "node": self._config.node,
                "backend": self._backend.name,
                "cameras": len(self._config.enabled_cameras),
                "startup_s": round(time.monotonic() - self._started, 2),
            },
        )

    async def _watchdog(self) -> None:
        """Ping systemd only while the pipeline makes progress, so a wedge gets us restarted."""
        interval = self._notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval / 2)
            if self._pipeline.healthy():
                self._notifier.watchdog()

    async def _table(self) -> None:
        assert self._print_table is not None
        while True:
            await asyncio.sleep(self._config.monitoring.stats_interval_s)
            latest = self._pipeline.reporter.latest
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
            (*diff.added, *diff.changed), self._backend.class_names, self._config.tracking
        )
        for text in unknown:
            log.error("config rejected, keeping the running one", extra={"problem": text})
        if unknown:
            return
        for camera_id in diff.removed:
            self._pipeline.remove_camera(camera_id)
        for camera in diff.changed:
            self._pipeline.remove_camera(camera.id)
            self._pipeline.add_camera(camera)
        for camera in diff.added:
            self._pipeline.add_camera(camera)
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
    config: AppConfig, registry: DaemonMetrics, pipeline: Pipeline
) -> MetricsServer | None:
    """The metrics endpoint, bound (not serving yet) before anything else starts."""
    monitoring = config.monitoring
    if monitoring.metrics_port is None:
        return None
    try:
        return MetricsServer(
            monitoring.metrics_host,
            monitoring.metrics_port,
            registry.registry,
            health=pipeline.health,
        )
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


def serve(config: AppConfig, duration_s: float | None, table: bool) -> int:
    """Load the model, then run the service until a signal or ``duration_s``."""
    started = time.monotonic()
    env = withhold_secret_variables(config)
    backend = load_backend(config.model)
    problems = filter_problems(config.enabled_cameras, backend.class_names, config.tracking)
    if problems:
        backend.close()
        raise StartupError(*(f"config: {problem}" for problem in problems))
    drift = open_drift_monitor(config.model, backend)

    def print_table(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    async def main() -> int:
        sink = MqttPublisher(config.mqtt, config.node)
        service = Service(
            config, backend, sink, print_table=print_table if table else None, drift=drift,
            env=env, started=started,
        )  # fmt: skip
        return await service.run(duration_s)

    try:
        return asyncio.run(main())
    except StartupError:
        backend.close()
        raise
