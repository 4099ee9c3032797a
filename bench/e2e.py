"""``edgewatch bench e2e``: us and Ultralytics on the same cameras, broker and subscriber.

One run per system, one after the other, never at the same time (they would share the CPU):

1. a real mosquitto on a free loopback port; the cameras are N of the shared clips (cycled),
   served live by the real RTSP server (``--source rtsp``) or read as files paced at their
   native fps and looping (``--source file``, for hosts without the RTSP server);
2. ours: ``edgewatch run`` as a subprocess on a generated config; Ultralytics:
   ``bench/ultralytics_baseline.py`` with the Python that has Ultralytics;
3. once every camera has delivered a detection and ``warmup_s`` more (under load, a hundred
   readers can take longer to start than any fixed warm-up), the subscriber measures for
   ``duration_s``; meanwhile psutil samples the process tree (children included: our capture
   runs one process per camera) for CPU% and memory;
4. the bare backend at the batch size the pipeline used (read from the daemon's own batch-size
   histogram over the window), so pipeline efficiency = e2e fps / backend images/s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.backend import BackendReport, run_backend_bench
from bench.subscriber import StreamMeasure, Subscriber
from daemon.batch.letterbox import rect_shape
from daemon.config.model import BackendKind
from daemon.monitor.metrics import STAGES
from tests.harness.broker import Mosquitto, free_port
from tests.harness.daemon import DaemonProcess, daemon_config, metric_value, write_config
from tests.harness.process import start_logged, tail, terminate

PREFIX = "edgewatch"
OURS_NODE = "bench-ours"
THEIRS_NODE = "bench-ultralytics"
_STREAMING_TIMEOUT_S = 180.0
_SAMPLE_S = 1.0
_STOP_TIMEOUT_S = 20.0
_TAIL_CHARS = 1500


class BenchError(RuntimeError):
    """The benchmark could not run (a component failed to start); operator-facing text."""


@dataclass(frozen=True)
class E2EOptions:
    cameras: int
    duration_s: float
    warmup_s: float
    onnx_model: Path
    pt_model: Path
    videos: tuple[Path, ...]
    backend: BackendKind = BackendKind.ONNXRUNTIME
    max_batch: int | None = None
    # GPU backends' batches in flight at once (model.inflight_batches); None: the default.
    inflight_batches: int | None = None
    # Our pipeline worker processes (model.workers); None: the default.
    workers: int | None = None
    # Every camera's decoder (ffmpeg, nvdec).
    decoder: str = "ffmpeg"
    source: str = "rtsp"
    baseline: str | None = None
    ultralytics_python: Path | None = None
    baseline_device: str = "cpu"
    baseline_half: bool = False
    backend_seconds: float = 5.0
    intra_op_threads: int = 0
    # Our daemon with object tracking and events on every camera.
    tracking: bool = False


@dataclass(frozen=True)
class Resources:
    cpu_percent: float
    # Of which the root process alone (ours: the daemon without its capture processes).
    cpu_percent_main: float
    rss_mb_mean: float
    rss_mb_peak: float
    pss_mb_mean: float
    processes: int
    # The whole machine's busy CPU over the window (same scale), everything included: the
    # rest is the harness (RTSP server, broker, subscriber) and the OS.
    machine_cpu_percent: float = 0.0


@dataclass(frozen=True)
class SystemResult:
    """One system's run: what the subscriber saw and what its processes used."""

    system: str
    stream: StreamMeasure
    resources: Resources
    # From the daemon's own metrics (ours only): images per batch, backend time per batch,
    # and the fraction of the window the backend was running.
    mean_batch: float | None = None
    mean_infer_ms: float | None = None
    backend_busy: float | None = None
    # Mean ms per batch in each pipeline stage observed (frame_wait: per frame), in path
    # order, from the daemon's ``edgewatch_stage_seconds`` over the window; upload and
    # download only where the backend times its transfers (GPU).
    stage_ms: dict[str, float] | None = None

    def to_json(self) -> dict[str, object]:
        s = self.stream
        return {
            "system": self.system,
            "window_s": round(s.window_s, 3),
            "total_fps": round(s.total_fps, 2),
            "latency_ms": {
                "p50": s.latency_ms_p50,
                "p95": s.latency_ms_p95,
                "p99": s.latency_ms_p99,
            },
            "dropped": s.dropped,
            "malformed": s.malformed,
            "cameras": [dataclasses.asdict(c) for c in s.cameras],
            "resources": dataclasses.asdict(self.resources),
            "mean_batch": self.mean_batch,
            "mean_infer_ms": self.mean_infer_ms,
            "backend_busy": self.backend_busy,
            "stage_ms": self.stage_ms,
        }


@dataclass(frozen=True)
class E2EReport:
    cameras: int
    source: str
    ours: SystemResult
    theirs: SystemResult | None
    backend: BackendReport | None
    efficiency_batch: int | None
    efficiency: float | None
    machine: dict[str, object]

    def to_json(self) -> dict[str, object]:
        return {
            "kind": "e2e",
            "cameras": self.cameras,
            "source": self.source,
            "machine": self.machine,
            "ours": self.ours.to_json(),
            "theirs": self.theirs.to_json() if self.theirs else None,
            "ratio": _ratios(self.ours, self.theirs) if self.theirs else None,
            "backend": self.backend.to_json() if self.backend else None,
            "efficiency": {"batch": self.efficiency_batch, "value": self.efficiency},
        }


# -- resources -----------------------------------------------------------------------------


class ResourceSampler:
    """CPU% and memory of a process and all its descendants between ``start`` and ``stop``."""

    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)
        self._stop = threading.Event()
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._rss: list[float] = []
        self._pss: list[float] = []
        self._pids: set[int] = set()
        self._t0 = 0.0
        self._machine_start = psutil.cpu_times()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return []

    def _sample(self, first: bool) -> None:
        rss = pss = 0.0
        for proc in self._tree():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    mem = proc.memory_full_info()
            except psutil.Error:
                continue
            cpu = times.user + times.system
            if first:
                self._cpu_start[proc.pid] = cpu
            self._cpu_last[proc.pid] = cpu
            self._pids.add(proc.pid)
            rss += mem.rss
            pss += getattr(mem, "pss", mem.rss)
        self._rss.append(rss / 2**20)
        self._pss.append(pss / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_S):
            self._sample(first=False)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._machine_start = psutil.cpu_times()
        self._sample(first=True)
        self._thread.start()

    def stop(self) -> Resources:
        self._stop.set()
        self._thread.join()
        self._sample(first=False)
        elapsed = time.monotonic() - self._t0
        machine = psutil.cpu_times()
        machine_busy = _busy(machine) - _busy(self._machine_start)
        # A process born inside the window counts from zero CPU time.
        used = {pid: last - self._cpu_start.get(pid, 0.0) for pid, last in self._cpu_last.items()}
        scale = 100.0 / elapsed if elapsed > 0 else 0.0
        return Resources(
            cpu_percent=round(sum(used.values()) * scale, 1),
            cpu_percent_main=round(used.get(self._root.pid, 0.0) * scale, 1),
            rss_mb_mean=round(sum(self._rss) / len(self._rss), 1),
            rss_mb_peak=round(max(self._rss), 1),
            pss_mb_mean=round(sum(self._pss) / len(self._pss), 1),
            processes=len(self._pids),
            machine_cpu_percent=round(machine_busy * scale, 1),
        )


def _busy(times: Any) -> float:
    """Busy seconds of a ``psutil.cpu_times()`` reading (guest time is inside user already;
    steal is the hypervisor's, not this machine's work)."""
    fields = ("user", "nice", "system", "irq", "softirq")
    return float(sum(getattr(times, name, 0.0) for name in fields))


# -- one system ----------------------------------------------------------------------------


def _wait_streaming(
    sub: Subscriber, proc: subprocess.Popen[bytes], log: Path, cameras: int
) -> None:
    """Until every camera has delivered detections; a system that exits or leaves a camera
    silent for ``_STREAMING_TIMEOUT_S`` is an error, not a measurement."""
    deadline = time.monotonic() + _STREAMING_TIMEOUT_S
    while (streaming := sub.streaming()) < cameras:
        if proc.poll() is not None:
            raise BenchError(f"{log.stem} exited with {proc.returncode}: {tail(log, _TAIL_CHARS)}")
        if time.monotonic() > deadline:
            raise BenchError(
                f"{log.stem}: {streaming} of {cameras} cameras delivered detections in "
                f"{_STREAMING_TIMEOUT_S:.0f} s: " + tail(log, _TAIL_CHARS)
            )
        time.sleep(0.2)


@contextlib.contextmanager
def _stopping(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """``proc``, stopped gracefully on the way out so the next system runs on an idle CPU."""
    try:
        yield proc
    finally:
        terminate(proc, _STOP_TIMEOUT_S)


def _measure(
    system: str, proc: subprocess.Popen[bytes], sub: Subscriber, log: Path, opts: E2EOptions,
    *, metrics: Callable[[], str] | None = None,
) -> SystemResult:  # fmt: skip
    _wait_streaming(sub, proc, log, opts.cameras)
    time.sleep(opts.warmup_s)
    sampler = ResourceSampler(proc.pid)
    before = backend_totals(metrics)
    sampler.start()
    sub.open_window()
    time.sleep(opts.duration_s)
    stream = sub.close_window()
    resources = sampler.stop()
    after = backend_totals(metrics)
    if proc.poll() is not None:
        raise BenchError(
            f"{system} exited during the measurement ({proc.returncode}): {tail(log, _TAIL_CHARS)}"
        )
    batches = after.batches - before.batches
    if not batches:
        return SystemResult(system, stream, resources)
    infer_s = after.infer_s - before.infer_s
    stage_ms = stage_means(before, after)
    return SystemResult(
        system,
        stream,
        resources,
        mean_batch=round((after.images - before.images) / batches, 2),
        mean_infer_ms=round(infer_s / batches * 1000, 1),
        backend_busy=round(infer_s / stream.window_s, 3),
        stage_ms=stage_ms or None,
    )


@dataclass(frozen=True)
class BackendTotals:
    """The daemon's batch and stage counters at one read of ``/metrics``."""

    batches: float = 0.0
    images: float = 0.0
    infer_s: float = 0.0
    # Per stage: seconds and observations so far.
    stage_s: dict[str, float] = dataclasses.field(default_factory=dict)
    stage_n: dict[str, float] = dataclasses.field(default_factory=dict)


def stage_means(before: BackendTotals, after: BackendTotals) -> dict[str, float]:
    """Mean ms per observation of each stage observed between the two reads, in path order."""
    return {
        stage: round(1000 * (after.stage_s[stage] - before.stage_s.get(stage, 0.0)) / count, 2)
        for stage in after.stage_s
        if (count := after.stage_n[stage] - before.stage_n.get(stage, 0.0)) > 0
    }


def backend_totals(metrics: Callable[[], str] | None) -> BackendTotals:
    """The daemon's batch counters so far, from one read of ``/metrics`` so that they agree
    (zeros for a system without our metrics)."""
    if metrics is None:
        return BackendTotals()
    try:
        text = metrics()
    except OSError:
        return BackendTotals()
    names = ("batch_size_count", "batch_size_sum", "batch_latency_seconds_sum")
    batches, images, infer_s = (metric_value(text, f"edgewatch_backend_{n}") for n in names)
    if batches is None or images is None or infer_s is None:
        return BackendTotals()
    stage_s, stage_n = {}, {}
    for stage in STAGES:
        label = f'stage="{stage}"'
        seconds = metric_value(text, "edgewatch_stage_seconds_sum", label)
        count = metric_value(text, "edgewatch_stage_seconds_count", label)
        if seconds is not None and count is not None:
            stage_s[stage], stage_n[stage] = seconds, count
    return BackendTotals(batches, images, infer_s, stage_s, stage_n)


def run_ours(
    opts: E2EOptions, urls: dict[str, str], broker: Mosquitto, workdir: Path
) -> SystemResult:
    """Our daemon as a subprocess, measured by the subscriber and the sampler."""
    config = workdir / "ours.yaml"
    metrics_port = free_port()
    cameras = {cid: {"url": url, "decoder": opts.decoder} for cid, url in urls.items()}
    document = daemon_config(
        cameras, opts.onnx_model, mqtt_port=broker.port, metrics_port=metrics_port,
        node=OURS_NODE, prefix=PREFIX, max_batch=opts.max_batch or min(opts.cameras, 16),
        mqtt={"qos": 1}, test_timing=False,
        model_extra={"backend": opts.backend.value, "intra_op_threads": opts.intra_op_threads},
    )  # fmt: skip
    if opts.inflight_batches is not None:
        document["model"]["inflight_batches"] = opts.inflight_batches
    if opts.workers is not None:
        document["model"]["workers"] = opts.workers
    if opts.tracking:
        document["tracking"] = {"enabled": True}
    write_config(config, document)
    daemon = DaemonProcess(
        config, workdir / "ours.log", metrics_port=metrics_port, log_level="warning",
        log_format="logfmt", extra_args=["--duration", str(opts.warmup_s + opts.duration_s + 300)],
        # The tree may be on PYTHONPATH only, with no console script (bench/gpu_run.sh).
        program=[sys.executable, "-m", "daemon.cli"],
    )  # fmt: skip
    sub = Subscriber(broker.port, PREFIX, OURS_NODE)
    try:
        with _stopping(daemon.start().proc) as proc:
            return _measure("edgewatch", proc, sub, daemon.log_path, opts, metrics=daemon.metrics)
    finally:
        sub.close()


def run_theirs(
    opts: E2EOptions, urls: dict[str, str], broker: Mosquitto, workdir: Path
) -> SystemResult:
    """Ultralytics' multi-stream predict in its own interpreter, measured the same way."""
    python = opts.ultralytics_python
    if python is None or not python.exists():
        raise BenchError(
            f"--ultralytics-python {python} not found: create a venv with "
            "'pip install ultralytics paho-mqtt' and point the option at its python"
        )
    streams = workdir / "cameras.streams"
    streams.write_text("\n".join(urls.values()) + "\n")
    script = Path(__file__).with_name("ultralytics_baseline.py")
    log = workdir / "ultralytics.log"
    command = [
        str(python), str(script), "--model", str(opts.pt_model), "--sources", str(streams),
        "--camera-ids", ",".join(urls), "--mqtt-port", str(broker.port), "--prefix", PREFIX,
        "--node", THEIRS_NODE, "--duration", str(opts.warmup_s + opts.duration_s + 300),
        "--device", opts.baseline_device,
    ]  # fmt: skip
    if opts.baseline_half:
        command.append("--half")
    # Ultralytics must not try to reach the network (settings sync, pip auto-install).
    env = {**os.environ, "YOLO_OFFLINE": "1", "ULTRALYTICS_SYNC": "False"}
    sub = Subscriber(broker.port, PREFIX, THEIRS_NODE)
    try:
        with _stopping(start_logged(command, log, env)) as proc:
            return _measure("ultralytics", proc, sub, log, opts)
    finally:
        sub.close()


# -- the whole benchmark -------------------------------------------------------------------


def camera_videos(videos: Sequence[Path], count: int) -> dict[str, Path]:
    """``count`` cameras cycling over ``videos`` (sorted): ``cam00 -> first clip`` ..."""
    if not videos:
        raise BenchError("no videos to use as cameras")
    ordered = sorted(videos)
    return {f"cam{i:02d}": ordered[i % len(ordered)] for i in range(count)}


def pipeline_input_hw(videos: Sequence[Path], input_size: int = 640) -> tuple[int, int]:
    """The letterbox canvas our batcher uses for these clips (rect mode: max over cameras)."""
    import cv2

    shapes = []
    for video in videos:
        cap = cv2.VideoCapture(str(video))
        try:
            hw = (int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
        finally:
            cap.release()
        shapes.append(rect_shape(hw, (input_size, input_size)))
    return max(s[0] for s in shapes), max(s[1] for s in shapes)


def machine_info() -> dict[str, object]:
    import platform

    return {
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def run_e2e(opts: E2EOptions, workdir: Path | None = None) -> E2EReport:
    """Run ours (and the baseline) on ``opts.cameras`` cameras, then the backend ceiling."""
    cams = camera_videos(opts.videos, opts.cameras)
    with contextlib.ExitStack() as stack:
        work = workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-e2e-"))
        )
        work.mkdir(parents=True, exist_ok=True)
        broker = stack.enter_context(Mosquitto())
        if opts.source == "rtsp":
            from tests.harness.rtsp import RtspServer

            server = stack.enter_context(RtspServer(cams))
            urls = {cid: server.url(cid) for cid in cams}
        elif opts.source == "file":
            urls = {cid: str(path) for cid, path in cams.items()}
        else:
            raise BenchError(f"unknown camera source {opts.source!r} (rtsp or file)")
        ours = run_ours(opts, urls, broker, work)
        theirs = run_theirs(opts, urls, broker, work) if opts.baseline == "ultralytics" else None
    backend: BackendReport | None = None
    batch: int | None = None
    efficiency: float | None = None
    if opts.backend_seconds > 0:
        batch = (
            max(1, round(ours.mean_batch))
            if ours.mean_batch
            else (opts.max_batch or min(opts.cameras, 16))
        )
        backend = run_backend_bench(
            opts.onnx_model, opts.backend, [batch], opts.backend_seconds, list(cams.values()),
            input_hw=pipeline_input_hw(list(cams.values())), intra_op_threads=opts.intra_op_threads,
        )  # fmt: skip
        point = backend.point(batch)
        if point is not None and point.images_per_s:
            efficiency = round(ours.stream.total_fps / point.images_per_s, 3)
    return E2EReport(
        opts.cameras, opts.source, ours, theirs, backend, batch, efficiency, machine_info()
    )


def _ratios(ours: SystemResult, theirs: SystemResult | None) -> dict[str, float | None]:
    if theirs is None:
        return {}

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    return {
        "total_fps": ratio(ours.stream.total_fps, theirs.stream.total_fps),
        "latency_p95": ratio(ours.stream.latency_ms_p95, theirs.stream.latency_ms_p95),
        "cpu_percent": ratio(ours.resources.cpu_percent, theirs.resources.cpu_percent),
        "pss_mb": ratio(ours.resources.pss_mb_mean, theirs.resources.pss_mb_mean),
    }


def render_e2e_table(report: E2EReport) -> str:
    """Ours, theirs and the ratio, one metric a row."""
    rows: list[tuple[str, Any, Any]] = []
    o, t = report.ours, report.theirs

    def fmt(v: float | None, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    def row(name: str, a: float | None, b: float | None, spec: str = ".1f") -> None:
        rows.append((name, fmt(a, spec), fmt(b, spec)))

    row("total processed fps", o.stream.total_fps, t.stream.total_fps if t else None)
    row("latency p50 ms", o.stream.latency_ms_p50, t.stream.latency_ms_p50 if t else None)
    row("latency p95 ms", o.stream.latency_ms_p95, t.stream.latency_ms_p95 if t else None)
    row("latency p99 ms", o.stream.latency_ms_p99, t.stream.latency_ms_p99 if t else None)
    row("dropped frames", _f(o.stream.dropped), _f(t.stream.dropped) if t else None, ".0f")
    row("CPU %", o.resources.cpu_percent, t.resources.cpu_percent if t else None)
    row("  of which main proc", o.resources.cpu_percent_main,
        t.resources.cpu_percent_main if t else None)  # fmt: skip
    row("machine CPU % (all)", o.resources.machine_cpu_percent,
        t.resources.machine_cpu_percent if t else None)  # fmt: skip
    row("PSS MB (mean)", o.resources.pss_mb_mean, t.resources.pss_mb_mean if t else None)
    row("RSS MB (sum, mean)", o.resources.rss_mb_mean, t.resources.rss_mb_mean if t else None)
    ratios = _ratios(o, t) if t else {}
    keyed = {"total processed fps": "total_fps", "latency p95 ms": "latency_p95",
             "CPU %": "cpu_percent", "PSS MB (mean)": "pss_mb"}  # fmt: skip
    lines = [
        f"{report.cameras} cameras ({report.source}), {o.stream.window_s:.0f} s window",
        f"{'metric':<22} {'edgewatch':>10} {'ultralytics':>12} {'ratio':>7}",
    ]
    for name, a, b in rows:
        r = ratios.get(keyed.get(name, ""))
        lines.append(f"{name:<22} {a:>10} {b:>12} {fmt(r, '.2f') if t else '-':>7}")
    point = report.backend.point(report.efficiency_batch or 0) if report.backend else None
    if report.efficiency is not None and point is not None:
        lines.append(
            f"pipeline efficiency {report.efficiency:.1%} (e2e {o.stream.total_fps:.1f} fps / "
            f"backend {point.images_per_s:.1f} img/s at batch {point.batch}, mean batch "
            f"{fmt(o.mean_batch, '.2f')})"
        )
        if o.mean_infer_ms is not None and o.backend_busy is not None:
            lines.append(
                f"  backend busy {o.backend_busy:.1%} of the window; a batch took "
                f"{o.mean_infer_ms:.1f} ms in the pipeline, {point.latency_ms_p50:.1f} ms bare"
            )
    if o.stage_ms:
        stages = ", ".join(f"{stage} {ms:.1f}" for stage, ms in o.stage_ms.items())
        lines.append(f"  mean ms per batch by stage (frame_wait per frame): {stages}")
        if "upload" in o.stage_ms:
            lines.append("  (inference: the device's compute, between upload and download)")
    return "\n".join(lines)


def _f(v: int | None) -> float | None:
    return None if v is None else float(v)


def write_json(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
