"""Per-camera stats over one monitoring interval: fps in/out, drops, latency percentiles.

``record_processed`` sits on the hot path (once per published frame), so each camera keeps a
preallocated ring of latencies and recording is a lock, a store and two increments.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from daemon.capture.state import CameraState, CaptureCounters
from daemon.publish.camera_stats import CameraStats

DEFAULT_LATENCY_WINDOW = 1024


def _plus(a: CaptureCounters, b: CaptureCounters) -> CaptureCounters:
    return CaptureCounters(
        **{f.name: getattr(a, f.name) + getattr(b, f.name) for f in dataclasses.fields(a)}
    )


@dataclass(frozen=True, slots=True)
class _Totals:
    """What a camera has counted so far, kept when its reader is replaced."""

    processed: int = 0
    # Capture counters of the camera's earlier readers (a new reader counts from zero).
    capture: CaptureCounters = field(default_factory=CaptureCounters)


class _CameraWindow:
    __slots__ = (
        "base",
        "count",
        "last_counters",
        "last_ts",
        "latencies",
        "next",
        "processed_total",
    )

    def __init__(self, window: int, now: float, totals: _Totals) -> None:
        self.latencies: npt.NDArray[np.float64] = np.zeros(window, np.float64)
        self.next = 0
        self.count = 0  # samples since the last snapshot (may exceed the window)
        self.processed_total = totals.processed
        self.base = totals.capture
        self.last_ts = now
        self.last_counters = totals.capture

    def recent(self) -> npt.NDArray[np.float64]:
        n = min(self.count, self.latencies.shape[0])
        if n == self.latencies.shape[0]:
            return self.latencies
        start = self.next - n
        if start >= 0:
            return self.latencies[start : self.next]
        return np.concatenate((self.latencies[start:], self.latencies[: self.next]))


class StatsCollector:
    """Collects processed-frame latencies and turns capture counters into interval stats.

    Thread-safe: frames may be recorded from the pipeline while the stats task snapshots.
    """

    def __init__(self, window: int = DEFAULT_LATENCY_WINDOW) -> None:
        if window < 1:
            raise ValueError("latency window must hold at least one sample")
        self._window = window
        self._lock = threading.Lock()
        self._cameras: dict[str, _CameraWindow] = {}
        # Totals of cameras no longer tracked: a camera added again (a hot reload replaces
        # its reader) continues from them, so its totals count since the daemon started.
        self._retired: dict[str, _Totals] = {}

    def add_camera(self, camera_id: str, now: float) -> None:
        """Start tracking a camera (no-op if tracked); its first interval starts at ``now``."""
        with self._lock:
            if camera_id not in self._cameras:
                totals = self._retired.pop(camera_id, _Totals())
                self._cameras[camera_id] = _CameraWindow(self._window, now, totals)

    def remove_camera(self, camera_id: str, final: CaptureCounters | None = None) -> None:
        """Stop tracking a camera; ``final``: its reader's last counters, kept in the totals."""
        with self._lock:
            cam = self._cameras.pop(camera_id, None)
            if cam is not None:
                capture = _plus(cam.base, final) if final is not None else cam.base
                self._retired[camera_id] = _Totals(cam.processed_total, capture)

    @property
    def cameras(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._cameras)

    def record_processed(self, camera_id: str, latency_s: float) -> None:
        """Count one frame of ``camera_id`` published ``latency_s`` after capture.

        Frames of cameras not (or no longer) tracked are ignored: after a hot-reload removal
        a late frame must not resurrect the camera.
        """
        with self._lock:
            cam = self._cameras.get(camera_id)
            if cam is None:
                return
            cam.latencies[cam.next] = latency_s
            cam.next = (cam.next + 1) % cam.latencies.shape[0]
            cam.count += 1
            cam.processed_total += 1

    def snapshot(
        self,
        now: float,
        counters: Mapping[str, CaptureCounters],
        states: Mapping[str, CameraState],
    ) -> dict[str, CameraStats]:
        """Close the interval of every tracked camera at ``now`` and start the next one."""
        with self._lock:
            return {
                cid: self._close(cid, cam, now, counters, states)
                for cid, cam in self._cameras.items()
            }

    def _close(
        self,
        camera_id: str,
        cam: _CameraWindow,
        now: float,
        counters: Mapping[str, CaptureCounters],
        states: Mapping[str, CameraState],
    ) -> CameraStats:
        current = _plus(cam.base, counters.get(camera_id, CaptureCounters()))
        previous = cam.last_counters
        # The first interval counts from zero: the collector is added when the camera starts.
        read = max(0, current.frames_read - previous.frames_read)
        dropped = max(0, current.frames_dropped - previous.frames_dropped)
        interval = now - cam.last_ts
        rate = 1.0 / interval if interval > 0 else 0.0
        p50: float | None = None
        p95: float | None = None
        if cam.count:
            p50, p95 = (float(v) for v in np.percentile(cam.recent(), (50.0, 95.0)))
        stats = CameraStats(
            camera_id=camera_id,
            ts=now,
            interval_s=max(interval, 0.0),
            state=states.get(camera_id, CameraState.STARTING),
            input_fps=read * rate,
            processed_fps=cam.count * rate,
            dropped=dropped,
            dropped_total=current.frames_dropped,
            frames_read=read,
            frames_read_total=current.frames_read,
            processed=cam.count,
            processed_total=cam.processed_total,
            reconnects_total=current.reconnects,
            latency_p50_s=p50,
            latency_p95_s=p95,
        )
        cam.count = 0
        cam.last_ts = now
        cam.last_counters = current
        return stats


def render_fps_table(stats: Mapping[str, CameraStats]) -> str:
    """A compact fixed-width table (one line per camera) for `run --fps-table` and the demo."""
    header = (
        f"{'camera':<16} {'state':<12} {'in fps':>7} {'out fps':>7} {'dropped':>8}"
        f" {'p50 ms':>7} {'p95 ms':>7}"
    )
    lines = [header, "-" * len(header)]
    for cid in sorted(stats):
        s = stats[cid]
        lines.append(
            f"{cid[:16]:<16} {s.state.value:<12} {s.input_fps:>7.1f} {s.processed_fps:>7.1f} "
            f"{s.dropped:>8d} {_fmt_ms(s.latency_p50_s):>7} {_fmt_ms(s.latency_p95_s):>7}"
        )
    return "\n".join(lines)


def _fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000.0:.0f}"
