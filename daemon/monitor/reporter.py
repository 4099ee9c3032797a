"""The stats interval: every ``interval_s`` the per-camera stats are closed, completed with
the drift check's and the tracker's parts, and handed to the sink, the metrics and the log."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Protocol

from daemon.capture.state import CameraState, CaptureCounters
from daemon.monitor.drift import DriftMonitor
from daemon.monitor.metrics import DaemonMetrics
from daemon.monitor.stats import StatsCollector
from daemon.postprocess.classes import class_name
from daemon.publish.camera_stats import CameraStats, LineCount, TrackingStats
from daemon.publish.sink import Sink
from daemon.track.cameras import TrackedCameras

log = logging.getLogger(__name__)


class CameraReadings(Protocol):
    """The running cameras' readers, as the stats need them."""

    def counters(self) -> dict[str, CaptureCounters]:
        """Each reader's capture counters."""
        ...

    def states(self) -> dict[str, CameraState]:
        """Each camera's state."""
        ...


class StatsReporter:
    """Closes the stats interval on a timer (``run``) or on demand (``report_once``)."""

    def __init__(
        self,
        collector: StatsCollector,
        cameras: CameraReadings,
        *,
        tracking: TrackedCameras,
        names: tuple[str, ...],
        sink: Sink,
        metrics: DaemonMetrics,
        interval_s: float,
        drift: DriftMonitor | None = None,
    ) -> None:
        self._collector = collector
        self._cameras = cameras
        self._tracking = tracking
        self._names = names
        self._sink = sink
        self._metrics = metrics
        self._interval_s = interval_s
        self._drift = drift
        # The last interval's stats (the ``--fps-table`` prints them).
        self.latest: dict[str, CameraStats] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Report once per interval until ``stop`` is set (or the task is cancelled)."""
        while not stop.is_set():
            await asyncio.sleep(self._interval_s)
            self.report_once()

    def report_once(self) -> dict[str, CameraStats]:
        """Close the stats interval: publish, export and log per-camera stats."""
        counters = self._cameras.counters()
        wall = time.time()
        # Intervals are measured on the monotonic clock; ``ts`` is published as epoch seconds.
        snapshot = {
            cid: dataclasses.replace(stats, ts=wall)
            for cid, stats in self._collector.snapshot(
                time.monotonic(), counters, self._cameras.states()
            ).items()
        }
        if self._drift is not None:
            snapshot = self._drift.attach(snapshot)
        snapshot = {cid: self._with_tracking(cid, stats) for cid, stats in snapshot.items()}
        for camera_id, camera_stats in snapshot.items():
            self._sink.publish_stats(camera_id, camera_stats)
        self._metrics.update_cameras(snapshot)
        self.latest = snapshot
        _log_stats(snapshot)
        return snapshot

    def _with_tracking(self, camera_id: str, stats: CameraStats) -> CameraStats:
        counts = self._tracking.counts(camera_id)
        if counts is None:
            return stats
        events = counts.events
        lines = tuple(
            LineCount(line, direction, class_name(self._names, cls), total)
            for (line, direction, cls), total in sorted(events.crossings_total.items())
        )
        tracking = TrackingStats(
            events.active_tracks, events.tracks_total, events.events_total, lines,
            events.zone_occupancy, counts.snapshots_sent, counts.snapshots_dropped,
        )  # fmt: skip
        return dataclasses.replace(stats, tracking=tracking)


def _log_stats(snapshot: dict[str, CameraStats]) -> None:
    """One structured summary line per interval (the table is ``--fps-table``'s, on stdout)
    and one debug line per camera."""
    log.info(
        "stats",
        extra={
            "cameras": len(snapshot),
            "streaming": sum(1 for s in snapshot.values() if s.state is CameraState.STREAMING),
            "input_fps": round(sum(s.input_fps for s in snapshot.values()), 1),
            "processed_fps": round(sum(s.processed_fps for s in snapshot.values()), 1),
            "dropped": sum(s.dropped for s in snapshot.values()),
        },
    )
    for camera_id, stats in snapshot.items():
        log.debug(
            "camera stats",
            extra={
                "camera": camera_id,
                "state": stats.state.value,
                "input_fps": round(stats.input_fps, 1),
                "processed_fps": round(stats.processed_fps, 1),
                "dropped": stats.dropped,
                "latency_p50_s": stats.latency_p50_s,
                "latency_p95_s": stats.latency_p95_s,
            },
        )
