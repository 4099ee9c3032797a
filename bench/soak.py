"""Soak: the real daemon with 4 RTSP cameras for N minutes and a fault every minute.

``python -m bench.soak [--duration 600] [--fault-every 60] [--json soak.json]``

Faults rotate: kill a camera's feed (then restore it), restart the broker, SIGHUP reload with
one camera changed, and an invalid config edit (rejected, then the valid file is written
back). The warm-up first runs every fault once, so whatever the daemon creates lazily
(executor threads, the spool, reconnect paths) exists before the baseline is taken. After
the warm-up the daemon's RSS, thread, file-descriptor and child-process counts are sampled
every few seconds; at the end (after a quiet settle) RSS must be within 5% of the baseline
and threads, FDs and children must not have grown. Each count is the minimum of three
samples a second apart, so a request being served or a reader being respawned at that
instant is not mistaken for a leak.

Prints a table and writes JSON. ``tests/system/test_daemon_soak.py`` runs a short version.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.harness.broker import Mosquitto, free_port
from tests.harness.daemon import (
    DaemonProcess,
    ResourceSample,
    daemon_config,
    decode_cost,
    write_config,
)
from tests.harness.rtsp import RtspServer

_REPO: Final = Path(__file__).resolve().parents[1]
_SHARED: Final = Path(os.environ.get("EDGEWATCH_SHARED", _REPO.parent / "shared"))
PREFIX: Final = "soak"
NODE: Final = "soak"
FAULTS: Final = ("camera_kill", "broker_restart", "sighup_reload", "corrupt_config")
_RECOVERY_TIMEOUT_S: Final = 60.0
_OUTAGE_S: Final = 4.0


@dataclass(frozen=True)
class SoakOptions:
    duration_s: float = 600.0
    fault_every_s: float = 60.0
    # At least this long, and at least until one fault of every kind has run and settled.
    warmup_s: float = 60.0
    sample_every_s: float = 5.0
    cameras: int = 4
    rss_growth_limit: float = 0.05
    model: Path = _SHARED / "models" / "yolov8n.onnx"
    videos: Path = _SHARED / "videos"
    workdir: Path | None = None
    json_out: Path | None = None


@dataclass(frozen=True)
class FaultRecord:
    t: float  # seconds since the daemon started
    kind: str
    detail: str
    recovered_s: float  # from the fault's end (feed back, broker up, file written) to healthy


@dataclass
class SoakReport:
    options: SoakOptions
    samples: list[ResourceSample] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    baseline: ResourceSample | None = None
    final: ResourceSample | None = None
    detections: dict[str, int] = field(default_factory=dict)
    exit_code: int | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def rss_growth(self) -> float | None:
        if self.baseline is None or self.final is None:
            return None
        return (self.final.rss_mb - self.baseline.rss_mb) / self.baseline.rss_mb

    def to_json(self) -> dict[str, Any]:
        def jsonable(obj: Any) -> Any:
            return str(obj) if isinstance(obj, Path) else obj

        return {
            "options": {k: jsonable(v) for k, v in dataclasses.asdict(self.options).items()},
            "passed": self.passed,
            "failures": self.failures,
            "rss_growth": self.rss_growth,
            "baseline": dataclasses.asdict(self.baseline) if self.baseline else None,
            "final": dataclasses.asdict(self.final) if self.final else None,
            "faults": [dataclasses.asdict(f) for f in self.faults],
            "samples": [dataclasses.asdict(s) for s in self.samples],
            "detections": self.detections,
            "exit_code": self.exit_code,
        }


class _DetectionCounter:
    """Counts detection messages per camera; resubscribes after every broker restart."""

    def __init__(self, port: int) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-counter")
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 2)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe(f"{PREFIX}/{NODE}/+/detections", qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        camera = msg.topic.rsplit("/", 2)[-2]
        with self._lock:
            self.counts[camera] = self.counts.get(camera, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class _Sampler:
    """Samples the daemon every ``every_s`` seconds on a thread."""

    def __init__(self, daemon: DaemonProcess, every_s: float) -> None:
        self._daemon = daemon
        self._every = every_s
        self._stop = threading.Event()
        self.samples: list[ResourceSample] = []
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            with contextlib.suppress(Exception):
                self.samples.append(self._daemon.sample())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _pick_videos(folder: Path, count: int) -> list[Path]:
    videos = sorted(sorted(folder.glob("*.mp4")), key=decode_cost)
    if len(videos) < count:
        raise SystemExit(f"soak: need {count} videos in {folder}, found {len(videos)}")
    return videos[:count]


class _Soak:
    """One soak run: owns the broker, the RTSP server, the daemon and the fault rotation."""

    def __init__(
        self, opts: SoakOptions, workdir: Path, broker: Mosquitto, rtsp: RtspServer
    ) -> None:
        self.opts = opts
        self.broker = broker
        self.rtsp = rtsp
        self.cameras = list(rtsp.paths)
        self.metrics_port = free_port()
        self.config = workdir / "cameras.yaml"
        self._max_fps: dict[str, float] = {}
        self._kills = 0
        self._reloads = 0
        write_config(self.config, self._document())
        self.daemon = DaemonProcess(
            self.config, workdir / "daemon.log", metrics_port=self.metrics_port
        )

    def _document(self) -> dict[str, Any]:
        cameras: dict[str, Any] = {}
        for cid in self.cameras:
            spec: dict[str, Any] = {"url": self.rtsp.url(cid)}
            if cid in self._max_fps:
                spec["max_fps"] = self._max_fps[cid]
            cameras[cid] = spec
        return daemon_config(
            cameras,
            self.opts.model,
            mqtt_port=self.broker.port,
            metrics_port=self.metrics_port,
            node=NODE,
            prefix=PREFIX,
            mqtt={"queue": {"spool_dir": str(self.config.parent / "spool")}},
        )

    def _count_log(self, msg: str) -> int:
        return self.daemon.log_text().count(f'"msg": "{msg}')

    def _all_streaming(self) -> bool:
        states = self.daemon.healthz().get("cameras", {})
        return len(states) == len(self.cameras) and set(states.values()) == {"streaming"}

    def _healthy(self) -> bool:
        return (
            self._all_streaming()
            and self.daemon.metric("edgewatch_mqtt_connected") == 1
            and self.daemon.metric("edgewatch_mqtt_queue_depth") == 0
        )

    def recover(self, what: str) -> float:
        return self.daemon.wait_until(self._healthy, _RECOVERY_TIMEOUT_S, what, poll_s=0.2)

    # -- faults ---------------------------------------------------------------------------

    def fault(self, kind: str) -> FaultRecord:
        started = self.daemon.sample().t
        inject: dict[str, Callable[[], str]] = {
            "camera_kill": self._camera_kill,
            "broker_restart": self._broker_restart,
            "sighup_reload": self._sighup_reload,
            "corrupt_config": self._corrupt_config,
        }
        detail = inject[kind]()
        return FaultRecord(started, kind, detail, round(self.recover(kind), 2))

    def _camera_kill(self) -> str:
        cid = self.cameras[self._kills % len(self.cameras)]
        self._kills += 1
        self.rtsp.stop_source(cid)
        self.daemon.wait_until(
            lambda: self.daemon.healthz()["cameras"].get(cid) != "streaming",
            30,
            f"{cid} noticed dead",
        )
        time.sleep(_OUTAGE_S)
        self.rtsp.start_source(cid)
        return f"{cid} feed killed for {_OUTAGE_S:.0f} s"

    def _broker_restart(self) -> str:
        self.broker.stop()
        time.sleep(_OUTAGE_S)
        self.broker.start()
        return f"mosquitto down for {_OUTAGE_S:.0f} s"

    def _sighup_reload(self) -> str:
        cid = self.cameras[self._reloads % len(self.cameras)]
        self._reloads += 1
        if self._max_fps.pop(cid, None) is None:
            self._max_fps[cid] = 10.0
        before = self._count_log("config reloaded")
        write_config(self.config, self._document())
        self.daemon.reload()
        self.daemon.wait_until(
            lambda: self._count_log("config reloaded") > before, 15, "SIGHUP reload", poll_s=0.2
        )
        return f"{cid} max_fps -> {self._max_fps.get(cid)}"

    def _corrupt_config(self) -> str:
        rejected = self._count_log("config rejected")
        reloaded = self._count_log("config reloaded")
        partial = self.config.with_name(".corrupt.partial")
        partial.write_text("cameras:\n  - id: [unclosed\n")
        partial.replace(self.config)
        self.daemon.wait_until(
            lambda: self._count_log("config rejected") > rejected, 15, "rejected", poll_s=0.2
        )
        write_config(self.config, self._document())
        self.daemon.wait_until(
            lambda: self._count_log("config reloaded") > reloaded, 15, "restored", poll_s=0.2
        )
        return "invalid YAML rejected, valid file restored"


def run_soak(opts: SoakOptions, log: Callable[[str], None] = print) -> SoakReport:
    """Run the soak; returns the report (also written to ``opts.json_out`` if set)."""
    report = SoakReport(opts)
    with contextlib.ExitStack() as stack:
        workdir = opts.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        videos = _pick_videos(opts.videos, opts.cameras)
        broker = stack.enter_context(Mosquitto(workdir=workdir / "mosquitto"))
        rtsp = stack.enter_context(RtspServer({f"cam{i}": v for i, v in enumerate(videos)}))
        soak = _Soak(opts, workdir, broker, rtsp)
        counter = _DetectionCounter(broker.port)
        stack.callback(counter.close)
        daemon = stack.enter_context(soak.daemon)
        soak.recover("start-up")
        log(f"soak: {opts.cameras} cameras streaming after {daemon.sample().t:.0f} s")
        for kind in FAULTS:  # warm-up: every fault once
            report.faults.append(soak.fault(kind))
        while daemon.sample().t < opts.warmup_s:
            time.sleep(0.5)
        report.baseline = daemon.settled_sample()
        sampler = _Sampler(daemon, opts.sample_every_s)
        sampler.start()
        detections_at_baseline = counter.snapshot()
        end = opts.duration_s
        next_fault = report.baseline.t + 1.0
        rotation = 0
        while next_fault < end - opts.fault_every_s / 2:
            time.sleep(max(0.0, next_fault - daemon.sample().t))
            record = soak.fault(FAULTS[rotation % len(FAULTS)])
            report.faults.append(record)
            log(f"  t={record.t:6.1f} s  {record.kind:<15} {record.detail}; "
                f"healthy again in {record.recovered_s:.1f} s")  # fmt: skip
            rotation += 1
            next_fault += opts.fault_every_s
        time.sleep(max(0.0, end - daemon.sample().t - 3.0))
        report.final = daemon.settled_sample()
        sampler.stop()
        report.samples = sampler.samples
        final_counts = counter.snapshot()
        report.detections = {
            cid: final_counts.get(cid, 0) - detections_at_baseline.get(cid, 0)
            for cid in soak.cameras
        }
        report.exit_code = daemon.stop()
        if "Traceback" in daemon.log_text():
            report.failures.append("a traceback in the daemon log")
    _judge(report)
    if opts.json_out is not None:
        opts.json_out.write_text(json.dumps(report.to_json(), indent=2))
    return report


def _judge(report: SoakReport) -> None:
    base, final = report.baseline, report.final
    assert base is not None
    assert final is not None
    growth = report.rss_growth
    if growth is not None and growth >= report.options.rss_growth_limit:
        report.failures.append(
            f"RSS grew {growth:.1%} (limit {report.options.rss_growth_limit:.0%})"
        )
    if final.threads > base.threads:
        report.failures.append(f"threads {base.threads} -> {final.threads}")
    if final.fds > base.fds:
        report.failures.append(f"file descriptors {base.fds} -> {final.fds}")
    if final.children != base.children:
        report.failures.append(f"child processes {base.children} -> {final.children}")
    if report.exit_code != 0:
        report.failures.append(f"exit status {report.exit_code} on SIGTERM")
    starved = [cid for cid, n in report.detections.items() if n == 0]
    if starved:
        report.failures.append(f"no detections after the warm-up from {starved}")


def render_soak_table(report: SoakReport) -> str:
    """Samples, faults and the verdict as fixed-width text."""
    lines = [f"{'t s':>7} {'RSS MB':>8} {'threads':>7} {'FDs':>5} {'children':>8} {'child MB':>9}"]

    def row(label: str, s: ResourceSample) -> str:
        return (
            f"{label:>7} {s.rss_mb:>8.1f} {s.threads:>7d} {s.fds:>5d} {s.children:>8d} "
            f"{s.children_rss_mb:>9.1f}"
        )

    if report.baseline is not None:
        lines.append(row("base", report.baseline))
    lines += [row(f"{s.t:.0f}", s) for s in report.samples]
    if report.final is not None:
        lines.append(row("final", report.final))
    lines.append("")
    lines.append(f"{'t s':>7} {'fault':<15} {'recovered s':>11}  detail")
    lines += [f"{f.t:>7.1f} {f.kind:<15} {f.recovered_s:>11.1f}  {f.detail}" for f in report.faults]
    growth = report.rss_growth
    lines.append("")
    lines.append(
        f"RSS growth after warm-up: {growth:+.2%}" if growth is not None else "RSS growth: -"
    )
    lines.append(f"detections after warm-up per camera: {report.detections}")
    lines.append("PASS" if report.passed else "FAIL: " + "; ".join(report.failures))
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> SoakOptions:
    defaults = SoakOptions()
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=defaults.duration_s, metavar="S")
    parser.add_argument("--fault-every", type=float, default=defaults.fault_every_s, metavar="S")
    parser.add_argument("--warmup", type=float, default=defaults.warmup_s, metavar="S")
    parser.add_argument("--sample-every", type=float, default=defaults.sample_every_s, metavar="S")
    parser.add_argument("--cameras", type=int, default=defaults.cameras)
    parser.add_argument("--model", type=Path, default=defaults.model)
    parser.add_argument("--videos", type=Path, default=defaults.videos)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=Path("soak.json"), dest="json_out")
    args = parser.parse_args(argv)
    return SoakOptions(
        duration_s=args.duration,
        fault_every_s=args.fault_every,
        warmup_s=args.warmup,
        sample_every_s=args.sample_every,
        cameras=args.cameras,
        model=args.model,
        videos=args.videos,
        workdir=args.workdir,
        json_out=args.json_out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    report = run_soak(_parse(argv))
    print(render_soak_table(report))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
