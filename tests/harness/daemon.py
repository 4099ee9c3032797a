"""Run the real daemon (``edgewatch run``) as a subprocess for tests and the soak benchmark.

``daemon_config`` builds the YAML an operator would write; ``DaemonProcess`` starts the
console script with it, keeps its log in a file, reads ``/healthz`` and ``/metrics`` and
samples the process's resources (RSS, threads, file descriptors, child processes) with
psutil. No pytest here: ``bench/soak.py`` uses it too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psutil
import yaml

from tests.harness.process import kill, start_logged, terminate
from tests.harness.service import Service

_STOP_TIMEOUT_S: Final = 30.0
_HTTP_TIMEOUT_S: Final = 5.0
# Resolution tags in the shared clips' names, cheapest to decode first.
_RESOLUTIONS: Final = ("360p", "480p", "720p", "1080p")
# A test waits seconds, not the daemon's production timeouts, for an outage to show.
_TEST_MODEL: Final = {"batch_timeout_ms": 30}
_TEST_CAPTURE: Final = {
    "open_timeout_s": 3,
    "read_timeout_s": 2,
    "reconnect_initial_s": 0.25,
    "reconnect_max_s": 1,
}


def decode_cost(video: Path) -> int:
    """Rank of a clip by its resolution tag: sort by it so a 2-core box spends its CPU on
    inference rather than on decoding 1080p."""
    return next((i for i, tag in enumerate(_RESOLUTIONS) if tag in video.name), len(_RESOLUTIONS))


def edgewatch_executable() -> str:
    """The ``edgewatch`` console script of the running interpreter's environment."""
    exe = shutil.which("edgewatch", path=str(Path(sys.executable).parent))
    if exe is None:
        raise FileNotFoundError("the edgewatch console script is not installed beside Python")
    return exe


def daemon_config(
    cameras: Mapping[str, str | Mapping[str, Any]],
    model: Path,
    *,
    mqtt_port: int,
    metrics_port: int,
    node: str = "testnode",
    prefix: str = "edgewatch",
    max_batch: int = 4,
    stats_interval_s: float = 1.0,
    mqtt: Mapping[str, Any] | None = None,
    model_extra: Mapping[str, Any] | None = None,
    capture: Mapping[str, Any] | None = None,
    test_timing: bool = True,
) -> dict[str, Any]:
    """The YAML document of a daemon config; ``mqtt``/``capture``/``model_extra`` add keys.

    ``cameras`` maps an id to its URL, or to the camera's other keys with its ``url``.

    With ``test_timing`` the capture timeouts are short (2 s read timeout, 1 s reconnect
    cap) and the batch wait 30 ms, so outages show within seconds, as a test needs; without
    it those keys keep the daemon's own defaults, which a benchmark measures.
    """
    return {
        "node": node,
        "cameras": [
            {"id": cid, **({"url": spec} if isinstance(spec, str) else spec)}
            for cid, spec in cameras.items()
        ],
        "model": {
            "path": str(model),
            "max_batch": max_batch,
            **(_TEST_MODEL if test_timing else {}),
            **(model_extra or {}),
        },
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "topic_prefix": prefix, **(mqtt or {})},
        "monitoring": {"stats_interval_s": stats_interval_s, "metrics_port": metrics_port},
        "capture": {**(_TEST_CAPTURE if test_timing else {}), **(capture or {})},
    }


def write_config(path: Path, document: Mapping[str, Any], mode: int = 0o600) -> None:
    """Write ``document`` atomically (the daemon polls the file and must never see half)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(yaml.safe_dump(dict(document), sort_keys=False))
    partial.chmod(mode)
    partial.replace(path)


@dataclass(frozen=True)
class ResourceSample:
    """The daemon's main process at one moment (its reader processes are ``children``)."""

    t: float  # seconds since the daemon started
    rss_mb: float
    threads: int
    fds: int
    children: int
    children_rss_mb: float


class DaemonProcess(Service):
    """``edgewatch run --config CONFIG`` with its output in ``log_path``; a context manager.

    ``program`` replaces the console script, e.g. ``python -m daemon.cli`` where the tree is
    only on ``PYTHONPATH`` (``bench/gpu_run.sh``).
    """

    def __init__(
        self,
        config: Path,
        log_path: Path,
        *,
        metrics_port: int | None = None,
        log_level: str = "info",
        log_format: str = "json",
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        program: Sequence[str] | None = None,
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.metrics_port = metrics_port
        self._command = [
            *(program or [edgewatch_executable()]),
            "--log-level",
            log_level,
            "--log-format",
            log_format,
            "run",
            "--config",
            str(config),
            *extra_args,
        ]
        self._env = None if env is None else {**os.environ, **env}
        self._proc: subprocess.Popen[bytes] | None = None
        self._ps: psutil.Process | None = None
        self._started = 0.0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> DaemonProcess:
        self._proc = start_logged(self._command, self.log_path, self._env)
        self._started = time.monotonic()
        self._ps = psutil.Process(self._proc.pid)
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("daemon not started")
        return self._proc

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def reload(self) -> None:
        """SIGHUP, as ``systemctl reload`` sends it."""
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = _STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait (a graceful stop); SIGKILL if it does not exit in ``timeout``."""
        return terminate(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL the daemon and any reader it left (they exit on their own within 0.5 s)."""
        if self._proc is None:
            return
        children = self._children()
        kill(self._proc)
        _gone, alive = psutil.wait_procs(children, timeout=3)
        for child in alive:
            child.kill()

    def close(self) -> None:
        """The end of a ``with`` block: ``kill``, not a graceful ``stop``, so cleanup is quick
        whatever state a test left the daemon in and takes the readers it left too. A test of
        the graceful stop calls ``stop`` itself."""
        self.kill()

    # -- observation --------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (``--log-format json``); other output lines are skipped."""
        records = []
        for line in self.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    def http_get(self, path: str) -> tuple[int, str]:
        """GET ``path`` on the metrics endpoint: (status, body)."""
        if self.metrics_port is None:
            raise RuntimeError("no metrics port configured")
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as err:
            return int(err.code), err.read().decode()

    def healthz(self) -> dict[str, Any]:
        return dict(json.loads(self.http_get("/healthz")[1]))

    def metrics(self) -> str:
        return self.http_get("/metrics")[1]

    def metric(self, name: str, labels: str | None = None) -> float | None:
        """One sample of ``/metrics`` by name (and exact label text, e.g. ``camera="cam0"``)."""
        return metric_value(self.metrics(), name, labels)

    def wait_until(
        self, condition: Callable[[], bool], timeout: float, what: str, poll_s: float = 0.1
    ) -> float:
        """Wait (bounded) for ``condition``; returns the seconds it took.

        Raises ``TimeoutError`` naming ``what`` with the log tail, or ``RuntimeError`` if the
        daemon exits meanwhile.
        """
        started = time.monotonic()
        deadline = started + timeout
        while True:
            try:
                if condition():
                    return time.monotonic() - started
            except OSError:
                pass  # the metrics endpoint is not up yet
            if not self.running:
                raise RuntimeError(
                    f"daemon exited ({self.proc.returncode}) while waiting for {what}:\n"
                    + self.tail()
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout} s; log tail:\n{self.tail()}")
            time.sleep(poll_s)

    def wait_streaming(self, cameras: Sequence[str], timeout: float = 90.0) -> float:
        """Wait until ``/healthz`` reports every camera in ``cameras`` streaming."""

        def streaming() -> bool:
            states = self.healthz().get("cameras", {})
            return all(states.get(cid) == "streaming" for cid in cameras)

        return self.wait_until(streaming, timeout, f"cameras {list(cameras)} streaming")

    def _children(self) -> list[psutil.Process]:
        try:
            return self._ps.children(recursive=True) if self._ps is not None else []
        except psutil.Error:
            return []

    def sample(self) -> ResourceSample:
        """RSS, threads, open file descriptors and child processes of the daemon now."""
        if self._ps is None:
            raise RuntimeError("daemon not started")
        with self._ps.oneshot():
            rss = self._ps.memory_info().rss
            threads = self._ps.num_threads()
            fds = self._ps.num_fds()
        children = self._children()
        children_rss = 0
        for child in children:
            try:
                children_rss += child.memory_info().rss
            except psutil.Error:
                continue
        return ResourceSample(
            t=round(time.monotonic() - self._started, 2),
            rss_mb=round(rss / 2**20, 2),
            threads=threads,
            fds=fds,
            children=len(children),
            children_rss_mb=round(children_rss / 2**20, 2),
        )

    def settled_sample(self, count: int = 3) -> ResourceSample:
        """Each count at its minimum over ``count`` samples a second apart: a transient FD
        (an HTTP request being served), thread or respawning reader is not a leak, a lasting
        one shows in every sample."""
        samples = []
        for i in range(count):
            if i:
                time.sleep(1.0)
            samples.append(self.sample())
        return ResourceSample(
            t=samples[-1].t,
            rss_mb=min(s.rss_mb for s in samples),
            threads=min(s.threads for s in samples),
            fds=min(s.fds for s in samples),
            children=min(s.children for s in samples),
            children_rss_mb=min(s.children_rss_mb for s in samples),
        )


def metric_value(text: str, name: str, labels: str | None = None) -> float | None:
    """A sample's value from Prometheus text format; None when absent."""
    label_part = r"\{" + re.escape(labels) + r"\}" if labels else r"(?:\{\})?"
    match = re.search(rf"^{re.escape(name)}{label_part} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None
