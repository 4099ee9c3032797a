"""The running daemon: one asyncio loop wiring capture -> batch -> infer -> postprocess -> publish.

The loop itself only does bookkeeping. Letterboxing, inference and decoding run in a worker
thread per in-flight batch; frames are read by one process per camera; MQTT network I/O runs
on paho's thread. Nothing on the loop blocks, so signals, stats and health stay responsive
even when inference is slow.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from daemon.batch.batcher import Batch, BatchBuffer, BatchSelector
from daemon.capture.source import CameraSource
from daemon.capture.state import CameraState, StateChange
from daemon.config.model import AppConfig, CameraConfig
from daemon.config.secrets import mask_url
from daemon.config.tracking import TrackingConfig
from daemon.infer.backend import Backend
from daemon.logs import RepeatLimiter
from daemon.monitor.drift import DriftMonitor
from daemon.monitor.metrics import DaemonMetrics, Health, publisher_health
from daemon.monitor.stats import CameraStats, LineCount, StatsCollector, TrackingStats
from daemon.postprocess.classes import class_name, resolve_classes
from daemon.postprocess.yolo import Detections, decode_batch
from daemon.publish.mqtt import MqttPublisher
from daemon.track.events import TrackEvent
from daemon.track.payload import event_payload
from daemon.track.snapshots import Snapshotter
from daemon.track.stage import CameraTracking, FramePixels

log = logging.getLogger(__name__)

_POLL_S = 0.2
# While a batch is filling, how often the loop looks for newly arrived frames.
_FILL_POLL_S = 0.002
# With nothing waiting, look again well within one frame interval (33-40 ms): a longer
# sleep lets readers overwrite frames the GPU had time for (measured: 16 cameras on an
# H200 went from 77% to 100% of the input when this dropped from 50 ms to 10 ms).
_IDLE_POLL_S = 0.005
# No batch completed for this long while frames are waiting means inference is wedged.
_WEDGED_AFTER_S = 60.0
# This many failed batches in a row is a broken model or runtime, not one bad frame.
_FAILING_AFTER_BATCHES = 10
# A failing batch is logged at most once per this many seconds, with the count in between.
_BATCH_ERROR_WINDOW_S = 10.0


@dataclass(frozen=True, slots=True)
class CameraFilter:
    """Per-camera output rules resolved against the model's class names."""

    confidence: float
    class_ids: npt.NDArray[np.int64] | None

    def apply(self, detections: Detections) -> Detections:
        keep = detections.scores >= self.confidence
        if self.class_ids is not None:
            keep &= np.isin(detections.class_ids, self.class_ids)
        return detections if bool(keep.all()) else detections.select(keep)


def resolve_filter(
    camera: CameraConfig, default_conf: float, names: tuple[str, ...]
) -> CameraFilter:
    """Turn a camera's class filter (names or ids) into ids; unknown classes are a config error."""
    class_ids = resolve_classes(camera.classes, names, f"cameras[{camera.id}].classes")
    conf = camera.confidence if camera.confidence is not None else default_conf
    return CameraFilter(conf, class_ids)


def filter_problems(
    cameras: Iterable[CameraConfig],
    names: tuple[str, ...],
    tracking: TrackingConfig | None = None,
) -> list[str]:
    """Class filters naming classes the model lacks: config mistakes only the model reveals.

    ``tracking`` is the top-level tracking block: with it, the class filters of each
    tracking camera's tracker, zones and lines are checked too."""
    problems = []
    for camera in cameras:
        try:
            resolve_filter(camera, 0.0, names)
            settings = camera.tracking or tracking
            if settings is not None and settings.enabled:
                CameraTracking(camera, settings, names)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


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


class Pipeline:
    """Owns the camera readers and drives batches through the backend to the publisher."""

    def __init__(
        self,
        config: AppConfig,
        backend: Backend,
        publisher: MqttPublisher,
        stats: StatsCollector,
        metrics: DaemonMetrics,
        *,
        source_factory: Callable[[CameraConfig], CameraSource] | None = None,
        drift: DriftMonitor | None = None,
    ) -> None:
        self._config = config
        # Shadow-inference drift check (owned: closed when run() ends); None when off.
        self._drift = drift
        self._backend = backend
        self._publisher = publisher
        self._stats = stats
        self._metrics = metrics
        self.latest_stats: dict[str, CameraStats] = {}
        self._make_source = source_factory or (lambda cam: CameraSource(cam, config.capture))
        self._sources: dict[str, CameraSource] = {}
        self._filters: dict[str, CameraFilter] = {}
        # Each camera's epoch (see daemon/publish/epochs.py): new whenever its reader starts.
        self._epochs: dict[str, int] = {}
        # Cameras with tracking on; the batch worker feeds them after NMS.
        self._tracking: dict[str, CameraTracking] = {}
        # The snapshot encoder thread, started with the first camera that wants snapshots.
        self._snapshots: Snapshotter | None = None
        self._selector = BatchSelector(backend.max_batch, config.model.batch_timeout_ms / 1000)
        self._inflight = backend.max_inflight
        self._free_buffers: asyncio.Queue[BatchBuffer] = asyncio.Queue()
        for _ in range(self._inflight):
            self._free_buffers.put_nowait(
                BatchBuffer(backend.max_batch, backend.input_hw, backend.dynamic_hw)
            )
        self._executor = ThreadPoolExecutor(self._inflight, thread_name_prefix="infer")
        # Decode at the lowest threshold any camera wants; each camera then filters its own.
        self._decode_conf = config.model.confidence
        self._last_batch_done = time.monotonic()
        self._batches = 0
        self._failed_in_row = 0
        self._last_failure: str | None = None
        self._batch_errors = RepeatLimiter(_BATCH_ERROR_WINDOW_S)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- cameras -------------------------------------------------------------------------

    def add_camera(self, camera: CameraConfig) -> None:
        """Start reading ``camera`` (also used by hot reload)."""
        self._filters[camera.id] = resolve_filter(
            camera, self._config.model.confidence, self._backend.class_names
        )
        tracking = self._config.tracking_of(camera)
        if tracking.enabled:
            if tracking.snapshots.enabled and self._snapshots is None:
                self._snapshots = Snapshotter(self._publish_snapshot)
            self._tracking[camera.id] = CameraTracking(
                camera, tracking, self._backend.class_names, self._snapshots
            )
        self._decode_conf = self._lowest_conf()
        source = self._make_source(camera)
        self._sources[camera.id] = source
        self._epochs[camera.id] = self._publisher.start_camera(camera.id)
        self._stats.add_camera(camera.id, time.monotonic())
        source.start()
        log.info("camera started", extra={"camera": camera.id, "url": camera.display_url})

    def remove_camera(self, camera_id: str) -> None:
        """Stop a camera's reader and clear its retained state."""
        source = self._sources.pop(camera_id, None)
        if source is None:
            return
        source.stop()
        self._filters.pop(camera_id, None)
        self._epochs.pop(camera_id, None)
        self._close_tracking(camera_id)
        self._selector.forget(camera_id)
        self._stats.remove_camera(camera_id, source.counters())
        if self._drift is not None:
            self._drift.forget(camera_id)
        self._publisher.remove_camera(camera_id)
        if self._filters:
            self._decode_conf = self._lowest_conf()
        log.info("camera removed", extra={"camera": camera_id})

    def _lowest_conf(self) -> float:
        """Decode at the lowest score any camera publishes or any tracker looks at."""
        lows = [t.config.low_threshold for t in self._tracking.values()]
        return min([f.confidence for f in self._filters.values()] + lows)

    def _close_tracking(self, camera_id: str) -> None:
        """End the camera's tracks (their ``end`` events are published)."""
        stage = self._tracking.pop(camera_id, None)
        if stage is not None:
            self._publish_events(stage.close())

    def states(self) -> dict[str, CameraState]:
        # A copy first: /healthz calls this from the HTTP thread while a reload edits the dict.
        return {cid: s.state for cid, s in list(self._sources.items())}

    # -- health --------------------------------------------------------------------------

    def healthy(self) -> bool:
        """False when frames are waiting but no batch has completed for a long time, or
        when every recent batch failed, or when the publisher's pump stopped working (each
        gates the systemd watchdog)."""
        if self._failed_in_row >= _FAILING_AFTER_BATCHES:
            return False
        # A copy first, as in states(): the HTTP thread calls this during reloads too.
        waiting = any(s.pending_since() is not None for s in list(self._sources.values()))
        wedged = waiting and time.monotonic() - self._last_batch_done >= _WEDGED_AFTER_S
        return not wedged and self._publisher.pump_ok

    def health(self) -> Health:
        """What ``/healthz`` reports: the wedge check, whether messages can leave (broker
        reachable, pump working) and each camera's state."""
        mqtt = self._publisher.counters()
        return Health(
            self.healthy() and mqtt.can_publish,
            {
                "mqtt": publisher_health(mqtt),
                "batches": self._batches,
                "seconds_since_last_batch": round(time.monotonic() - self._last_batch_done, 1),
                "failed_batches_in_row": self._failed_in_row,
                "last_batch_error": self._last_failure,
                "cameras": {cid: state.value for cid, state in self.states().items()},
                # Reader process ids: a hot reload must leave unchanged cameras' readers alone.
                "readers": {cid: s.pid for cid, s in list(self._sources.items())},
            },
        )

    # -- main loops ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain the in-flight batches."""
        supervisor = asyncio.create_task(self._supervise(stop), name="supervisor")
        stats = asyncio.create_task(self._report_stats(stop), name="stats")
        try:
            await self._dispatch(stop)
        finally:
            if self._tasks:
                log.info("draining in-flight batches", extra={"batches": len(self._tasks)})
                await asyncio.gather(*self._tasks, return_exceptions=True)
            supervisor.cancel()
            stats.cancel()
            await asyncio.gather(supervisor, stats, return_exceptions=True)
            # The last interval's stats, while the readers' counters are still there.
            self.report_stats_once()
            for camera_id in list(self._sources):
                self._sources.pop(camera_id).stop()
            for camera_id in list(self._tracking):
                self._close_tracking(camera_id)
            if self._snapshots is not None:
                self._snapshots.close()
            self._executor.shutdown(wait=True)
            if self._drift is not None:
                self._drift.close()

    async def _dispatch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            buffer = await self._free_buffers.get()
            picked = await self._wait_for_batch(stop)
            if picked is None:
                self._free_buffers.put_nowait(buffer)
                return
            task = asyncio.create_task(self._process(buffer, picked))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _wait_for_batch(self, stop: asyncio.Event) -> list[CameraSource] | None:
        while not stop.is_set():
            sources = list(self._sources.values())
            ready = [s for s in sources if s.pending_since() is not None]
            live = sum(1 for s in sources if s.state is CameraState.STREAMING)
            picked = self._selector.select(ready, live)
            if picked:
                return picked
            for source in sources:
                if source.state is CameraState.STREAMING and source not in ready:
                    # We came back before the reader expected us: fetch its next frame.
                    source.want_now()
            await asyncio.sleep(_FILL_POLL_S if ready else _IDLE_POLL_S)
        return None

    async def _process(self, buffer: BatchBuffer, picked: list[CameraSource]) -> None:
        loop = asyncio.get_running_loop()
        # Taken now: a reload may replace a camera (new epoch) while this batch is inferred.
        epochs = {s.camera_id: self._epochs[s.camera_id] for s in picked}
        try:
            batch, detections, events, infer_s = await loop.run_in_executor(
                self._executor, self._infer, buffer, picked
            )
        except Exception as exc:
            # One bad batch (e.g. a corrupt frame the decoder let through) must not stop the
            # daemon; the readers keep going and the next batch is tried.
            self._on_batch_failed(exc, picked)
            return
        finally:
            self._free_buffers.put_nowait(buffer)
        if len(batch):
            self._metrics.observe_batch(infer_s, len(batch))
            self._publish(batch, detections, epochs)
            self._publish_events(events)

    def _on_batch_failed(self, exc: Exception, picked: list[CameraSource]) -> None:
        self._failed_in_row += 1
        self._last_failure = mask_url(f"{type(exc).__name__}: {exc}".splitlines()[0])
        held = self._batch_errors.admit()
        if held is not None:
            log.error(
                "batch failed",
                exc_info=exc,
                extra={
                    "cameras": [s.camera_id for s in picked],
                    "failed_in_row": self._failed_in_row,
                    "suppressed": held,
                },
            )

    def _infer(
        self, buffer: BatchBuffer, picked: list[CameraSource]
    ) -> tuple[Batch, list[Detections], list[TrackEvent], float]:
        """Assemble, infer, decode and track one batch (worker thread); returns the events
        and the inference time."""
        # One read: a reload may change it, and drift must compare at the decoded threshold.
        conf = self._decode_conf
        batch = buffer.assemble(picked)
        if not len(batch):
            return batch, [], [], 0.0
        started = time.perf_counter()
        raw = self._backend.infer(batch.images)
        infer_s = time.perf_counter() - started
        detections = decode_batch(
            raw,
            batch.geometries,
            conf,
            self._config.model.iou,
            self._config.model.max_detections,
        )
        if self._drift is not None:
            # Before the buffer is reused: sampled frames are copied out for the shadow check.
            self._drift.observe(batch, detections, conf)
        events: list[TrackEvent] = []
        for i, (meta, dets) in enumerate(zip(batch.metas, detections, strict=True)):
            stage = self._tracking.get(meta.camera_id)
            if stage is not None:
                pixels = FramePixels(batch.images[i], batch.geometries[i])
                events += stage.process(meta.capture_ts, (meta.width, meta.height), dets, pixels)
        return batch, detections, events, infer_s

    def _publish(self, batch: Batch, detections: list[Detections], epochs: dict[str, int]) -> None:
        names = self._backend.class_names
        now = time.time()
        for meta, dets in zip(batch.metas, detections, strict=True):
            camera_filter = self._filters.get(meta.camera_id)
            if camera_filter is None:  # removed by a reload while its frame was in flight
                continue
            stage = self._tracking.get(meta.camera_id)
            if stage is None or stage.config.publish_detections:
                self._publisher.publish_detections(
                    meta, camera_filter.apply(dets), names, now, epochs[meta.camera_id]
                )
            self._stats.record_processed(meta.camera_id, now - meta.capture_ts)
        self._last_batch_done = time.monotonic()
        self._batches += 1
        self._failed_in_row = 0

    def _with_tracking(self, camera_id: str, stats: CameraStats) -> CameraStats:
        stage = self._tracking.get(camera_id)
        if stage is None:
            return stats
        counts = stage.counts()
        names = self._backend.class_names
        lines = tuple(
            LineCount(line, direction, class_name(names, cls), total)
            for (line, direction, cls), total in sorted(counts.crossings_total.items())
        )
        sent, dropped = (0, 0) if self._snapshots is None else self._snapshots.counts(camera_id)
        tracking = TrackingStats(
            counts.active_tracks, counts.tracks_total, counts.events_total, lines,
            counts.zone_occupancy, sent, dropped,
        )  # fmt: skip
        return dataclasses.replace(stats, tracking=tracking)

    def _publish_snapshot(self, camera_id: str, payload: bytes) -> None:
        self._publisher.publish(self._publisher.topics.camera(camera_id, "snapshot"), payload)

    def _publish_events(self, events: list[TrackEvent]) -> None:
        names = self._backend.class_names
        now = time.time()
        topics = self._publisher.topics
        for event in events:
            topic = topics.camera(event.camera, "events")
            self._publisher.publish(topic, event_payload(event, names, now))

    async def _supervise(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for source in list(self._sources.values()):
                for change in source.poll():
                    self._on_state_change(change)
            await asyncio.sleep(_POLL_S)

    def _on_state_change(self, change: StateChange) -> None:
        # CameraSource logged it already.
        self._publisher.publish_state(change.camera_id, change.state, change.reason)

    async def _report_stats(self, stop: asyncio.Event) -> None:
        interval = self._config.monitoring.stats_interval_s
        while not stop.is_set():
            await asyncio.sleep(interval)
            self.report_stats_once()

    def report_stats_once(self) -> dict[str, CameraStats]:
        """Close the stats interval: publish, export and log per-camera stats."""
        counters = {cid: s.counters() for cid, s in self._sources.items()}
        wall = time.time()
        # Intervals are measured on the monotonic clock; ``ts`` is published as epoch seconds.
        snapshot = {
            cid: dataclasses.replace(stats, ts=wall)
            for cid, stats in self._stats.snapshot(
                time.monotonic(), counters, self.states()
            ).items()
        }
        if self._drift is not None:
            snapshot = self._drift.attach(snapshot)
        snapshot = {cid: self._with_tracking(cid, stats) for cid, stats in snapshot.items()}
        for camera_id, camera_stats in snapshot.items():
            self._publisher.publish_stats(camera_id, camera_stats)
        self._metrics.update_cameras(snapshot)
        self.latest_stats = snapshot
        _log_stats(snapshot)
        return snapshot
