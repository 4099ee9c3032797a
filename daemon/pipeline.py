"""The running daemon: one asyncio loop wiring capture -> batch -> infer -> postprocess -> publish.

The loop itself only does bookkeeping. Letterboxing, inference and decoding run in a worker
thread per in-flight batch; frames are read by one process per camera, each of which wakes
the loop when it publishes one (``daemon/capture/wake.py``); MQTT network I/O runs on paho's
thread. Nothing on the loop blocks, so signals, stats and health stay responsive even when
inference is slow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

from daemon.batch.batcher import Batch, BatchBuffer, BatchSelector
from daemon.capture.nvdec import NvdecTarget, unavailable_reason
from daemon.capture.source import CameraSource
from daemon.capture.state import CameraState, CaptureCounters, StateChange
from daemon.capture.wake import FrameArrivals
from daemon.config.model import AppConfig, CameraConfig, Decoder
from daemon.infer.backend import Backend, DeviceInput, transfer_times
from daemon.infer.warmup import ShapeWarmer
from daemon.logs import RepeatLimiter
from daemon.monitor.drift import DriftMonitor
from daemon.monitor.health import BatchHealth
from daemon.monitor.metrics import DaemonMetrics, Health
from daemon.monitor.reporter import StatsReporter
from daemon.monitor.stats import StatsCollector
from daemon.postprocess.detect import decode_inferred, infer_batch
from daemon.postprocess.filters import CameraFilter, resolve_filter
from daemon.postprocess.yolo import Detections
from daemon.publish.camera_stats import CameraStats
from daemon.publish.sink import Sink
from daemon.track.bytetrack import warm_up as warm_tracker
from daemon.track.cameras import TrackedCameras
from daemon.track.events import TrackEvent
from daemon.track.stage import CameraFrame, FramePixels

log = logging.getLogger(__name__)

_POLL_S = 0.2
# The longest the dispatch loop waits for a frame without looking again: arrivals and the
# fill deadline wake it; this only bounds what neither announces (a camera's state change
# changing how full a batch must be, a stop while no camera delivers).
_IDLE_WAIT_S = 0.05
# Camera states in which no frame size is coming soon: warm-up does not wait for them.
_NOT_OPENING = frozenset({CameraState.RECONNECTING, CameraState.DOWN})
# A failing batch is logged at most once per this many seconds, with the count in between.
_BATCH_ERROR_WINDOW_S = 10.0


class Pipeline:
    """Owns the camera readers and schedules their frames: batches go through the backend
    on worker threads and their results to the sink; stats and health are delegated."""

    def __init__(
        self,
        config: AppConfig,
        backend: Backend,
        sink: Sink,
        stats: StatsCollector,
        metrics: DaemonMetrics,
        *,
        drift: DriftMonitor | None = None,
    ) -> None:
        self._config = config
        # Shadow-inference drift check (owned: closed when run() ends); None when off.
        self._drift = drift
        self._backend = backend
        self._sink = sink
        self._stats = stats
        self._metrics = metrics
        self._sources: dict[str, CameraSource] = {}
        # Every reader of this pipeline signals it after each frame; closed when run() ends.
        self._arrivals = FrameArrivals()
        self._filters: dict[str, CameraFilter] = {}
        # Each camera's epoch (see daemon/publish/epochs.py): new whenever its reader starts.
        self._epochs: dict[str, int] = {}
        # Cameras with tracking on; the batch worker feeds them after NMS.
        # Worker processes share a snapshot directory's bound (daemon/workers/pool.py).
        self._tracking = TrackedCameras(
            backend.class_names, sink, directory_share=1 / config.model.workers
        )
        self.reporter = StatsReporter(
            stats,
            self,
            tracking=self._tracking,
            names=backend.class_names,
            sink=sink,
            metrics=metrics,
            interval_s=config.monitoring.stats_interval_s,
            drift=drift,
        )
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
        self._batch_health = BatchHealth()
        self._batch_errors = RepeatLimiter(_BATCH_ERROR_WINDOW_S)
        self._tasks: set[asyncio.Task[None]] = set()
        self._warmer = ShapeWarmer(backend)
        self._warming: asyncio.Future[None] | None = None
        self._warm_done = False
        self._warm_errors = RepeatLimiter(_BATCH_ERROR_WINDOW_S)

    # -- cameras -------------------------------------------------------------------------

    def add_camera(self, camera: CameraConfig) -> None:
        """Start reading ``camera`` (also used by hot reload)."""
        self._filters[camera.id] = resolve_filter(
            camera, self._config.model.confidence, self._backend.class_names
        )
        self._tracking.add(camera, self._config.tracking_of(camera))
        self._decode_conf = self._lowest_conf()
        source = CameraSource(
            camera,
            self._config.capture,
            nvdec=self._nvdec_target(camera),
            wake=self._arrivals.sender,
        )
        self._sources[camera.id] = source
        self._epochs[camera.id] = self._sink.start_camera(camera.id)
        self._stats.add_camera(camera.id, time.monotonic())
        source.start()
        log.info("camera started", extra={"camera": camera.id, "url": camera.display_url})

    def _nvdec_target(self, camera: CameraConfig) -> NvdecTarget | None:
        """Where a ``decoder: nvdec`` camera decodes to; None for any other camera, and for
        one that OpenCV must read instead (said once per camera, as a warning)."""
        if camera.decoder is not Decoder.NVDEC:
            return None
        backend = self._backend
        target = None
        if isinstance(backend, DeviceInput) and backend.cuda_device is not None:
            target = NvdecTarget(backend.cuda_device, backend.device_gate)
        reason = (
            f"the {backend.name} backend takes no frames in GPU memory "
            "(nvdec needs backend: torch on a CUDA GPU)"
            if target is None
            else self._nvdec_problem
        )
        if reason is not None:
            log.warning(
                "nvdec decoder unavailable, reading with FFmpeg",
                extra={"camera": camera.id, "reason": reason},
            )
            return None
        return target

    @cached_property
    def _nvdec_problem(self) -> str | None:
        # Probed once: importing PyNvVideoCodec loads the driver's libnvcuvid.
        return unavailable_reason()

    def remove_camera(self, camera_id: str) -> None:
        """Stop a camera's reader and clear its retained state."""
        source = self._sources.pop(camera_id, None)
        if source is None:
            return
        source.stop()
        self._filters.pop(camera_id, None)
        self._epochs.pop(camera_id, None)
        self._tracking.close(camera_id)
        self._selector.forget(camera_id)
        self._stats.remove_camera(camera_id, source.counters())
        if self._drift is not None:
            self._drift.forget(camera_id)
        self._sink.remove_camera(camera_id)
        if self._filters:
            self._decode_conf = self._lowest_conf()
        log.info("camera removed", extra={"camera": camera_id})

    def _lowest_conf(self) -> float:
        """Decode at the lowest score any camera publishes or any tracker looks at."""
        lows = self._tracking.low_thresholds()
        return min([f.confidence for f in self._filters.values()] + lows)

    def states(self) -> dict[str, CameraState]:
        """Each camera's state (any thread)."""
        # A copy first: /healthz calls this from the HTTP thread while a reload edits the dict.
        return {cid: s.state for cid, s in list(self._sources.items())}

    def counters(self) -> dict[str, CaptureCounters]:
        """Each camera reader's capture counters."""
        return {cid: s.counters() for cid, s in list(self._sources.items())}

    # -- health --------------------------------------------------------------------------

    def healthy(self) -> bool:
        """False when frames are waiting but no batch has completed for a long time, or
        when every recent batch failed (each gates the systemd watchdog)."""
        # A copy first, as in states(): the HTTP thread calls this during reloads too.
        waiting = any(s.pending_since() is not None for s in list(self._sources.values()))
        return self._batch_health.healthy(waiting)

    def health(self) -> Health:
        """The pipeline's part of ``/healthz``: warm, the wedge check and each camera's
        state (the service adds whether messages can leave)."""
        return Health(
            self._warm_done and self.healthy(),
            {
                # False until every batch shape of the cameras at start is compiled.
                "warm": self._warm_done,
                **self._batch_health.detail(),
                "cameras": {cid: state.value for cid, state in self.states().items()},
                # Reader process ids: a hot reload must leave unchanged cameras' readers alone.
                "readers": {cid: s.pid for cid, s in list(self._sources.items())},
            },
        )

    def latest_stats(self) -> dict[str, CameraStats]:
        """Each camera's stats over the last closed monitoring interval."""
        return self.reporter.latest

    # -- main loops ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None] = lambda: None) -> None:
        """Warm the backend for every batch shape the cameras can produce, call ``on_ready``,
        then schedule batches until ``stop`` is set and drain the in-flight ones."""
        supervisor = asyncio.create_task(self._supervise(stop), name="supervisor")
        stats = asyncio.create_task(self.reporter.run(stop), name="stats")
        stopping = asyncio.create_task(self._notify_stop(stop), name="notify stop")
        try:
            await self._warm_up(stop)
            if not stop.is_set():
                on_ready()
            await self._dispatch(stop)
        finally:
            if self._tasks:
                log.info("draining in-flight batches", extra={"batches": len(self._tasks)})
                await asyncio.gather(*self._tasks, return_exceptions=True)
            for task in (supervisor, stats, stopping):
                task.cancel()
            await asyncio.gather(supervisor, stats, stopping, return_exceptions=True)
            # The last interval's stats, while the readers' counters are still there.
            self.reporter.report_once()
            for camera_id in list(self._sources):
                self._sources.pop(camera_id).stop()
            self._arrivals.close()
            self._tracking.close_all()
            self._executor.shutdown(wait=True)
            if self._drift is not None:
                self._drift.close()

    async def _warm_up(self, stop: asyncio.Event) -> None:
        """Before the first batch: in rect mode, wait (up to ``capture.open_timeout_s``) for
        the cameras' frame sizes, then warm every batch shape they combine to, and the
        tracker."""
        loop = asyncio.get_running_loop()
        warming = []
        if self._tracking.active:
            # At once and on a thread of its own: compiling the tracker holds no batch worker
            # and waits for no camera. Not without a tracked camera: its compiled code takes
            # about 50 MB (bench/README.md). A reload that turns tracking on loads it (or
            # compiles it) with the camera's first batch.
            warming.append(loop.run_in_executor(None, warm_tracker))
        if self._backend.dynamic_hw:
            deadline = time.monotonic() + self._config.capture.open_timeout_s
            while not stop.is_set() and time.monotonic() < deadline:
                sources = list(self._sources.values())
                if all(s.frame_hw is not None or s.state in _NOT_OPENING for s in sources):
                    break
                await asyncio.sleep(_POLL_S)
        sizes = [hw for s in list(self._sources.values()) if (hw := s.frame_hw) is not None]
        warming.append(loop.run_in_executor(self._executor, self._warmer.warm, sizes))
        await asyncio.gather(*warming)
        self._warm_done = True

    def _warm_later(self, frame_hw: tuple[int, int]) -> None:
        """Warm a new frame size off the dispatch path; its camera waits until it is warm."""
        if self._warming is None or self._warming.done():
            loop = asyncio.get_running_loop()
            self._warming = loop.run_in_executor(self._executor, self._warmer.warm, [frame_hw])
            self._warming.add_done_callback(self._on_warmed)

    def _on_warmed(self, future: asyncio.Future[None]) -> None:
        # On failure the camera stays held back and is warmed again at its next frame.
        if future.cancelled():
            return
        if (exc := future.exception()) is None:
            # Its frames may be waiting already: look at them now, not at the next arrival.
            self._arrivals.notify()
            return
        held = self._warm_errors.admit()
        if held is not None:
            log.error("warming the backend for a new frame size failed",
                      exc_info=exc, extra={"suppressed": held})  # fmt: skip

    async def _dispatch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            buffer = await self._free_buffers.get()
            picked = await self._wait_for_batch(stop)
            if picked is None:
                self._free_buffers.put_nowait(buffer)
                return
            # Taken in the step that picked them: a reload may remove or replace a camera
            # before the batch starts, and again while it is inferred.
            epochs = {s.camera_id: self._epochs[s.camera_id] for s in picked}
            task = asyncio.create_task(self._process(buffer, picked, epochs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _notify_stop(self, stop: asyncio.Event) -> None:
        """A stop ends the dispatch loop's wait at once, even with no camera delivering."""
        await stop.wait()
        self._arrivals.notify()

    async def _wait_for_batch(self, stop: asyncio.Event) -> list[CameraSource] | None:
        """Look at every camera whenever a frame arrives, until the selector picks a batch:
        no polling, and a frame published while the cameras are looked at wakes the next
        wait at once."""
        while not stop.is_set():
            self._arrivals.clear()
            sources = list(self._sources.values())
            ready = []
            for source in sources:
                if source.pending_since() is None:
                    continue
                if self._warmer.is_warm(source.frame_hw):
                    ready.append(source)
                elif (frame_hw := source.frame_hw) is not None:
                    self._warm_later(frame_hw)
            live = [s for s in sources if s.state is CameraState.STREAMING]
            picked = self._selector.select(ready, live)
            if picked:
                return picked
            ready_now = set(ready)
            for source in sources:
                if source.state is CameraState.STREAMING and source not in ready_now:
                    # We came back before the reader expected us: fetch its next frame.
                    source.want_now()
            due_in = self._selector.due_in()
            await self._arrivals.wait(_IDLE_WAIT_S if due_in is None else min(due_in, _IDLE_WAIT_S))
        return None

    async def _process(
        self, buffer: BatchBuffer, picked: list[CameraSource], epochs: dict[str, int]
    ) -> None:
        loop = asyncio.get_running_loop()
        released = False

        def release() -> None:
            # Once, from whichever comes first: the worker's word that the frames are
            # taken, or the end of the batch (a failed one may never say it).
            nonlocal released
            if not released:
                released = True
                self._selector.assembled(picked)
                self._arrivals.notify()

        try:
            batch, detections, events, stages = await loop.run_in_executor(
                self._executor,
                self._infer,
                buffer,
                picked,
                lambda: loop.call_soon_threadsafe(release),
            )
        except Exception as exc:
            # One bad batch (e.g. a corrupt frame the decoder let through) must not stop the
            # daemon; the readers keep going and the next batch is tried.
            self._on_batch_failed(exc, picked)
            return
        finally:
            self._free_buffers.put_nowait(buffer)
            release()
        if len(batch):
            started = time.perf_counter()
            self._publish(batch, detections, epochs)
            self._tracking.publish(events)
            stages["publish"] = time.perf_counter() - started
            for stage, seconds in stages.items():
                self._metrics.observe_stage(stage, seconds)

    def _on_batch_failed(self, exc: Exception, picked: list[CameraSource]) -> None:
        failed_in_row = self._batch_health.failed(exc)
        held = self._batch_errors.admit()
        if held is not None:
            log.error(
                "batch failed",
                exc_info=exc,
                extra={
                    "cameras": [s.camera_id for s in picked],
                    "failed_in_row": failed_in_row,
                    "suppressed": held,
                },
            )

    def _infer(
        self, buffer: BatchBuffer, picked: list[CameraSource], taken: Callable[[], object]
    ) -> tuple[Batch, list[Detections], list[TrackEvent], dict[str, float]]:
        """Assemble, infer, decode and track one batch (worker thread), calling ``taken``
        once the cameras' frames are taken; returns the events and the seconds each later
        stage took (frame waits and the backend call are observed here)."""
        # One read: a reload may change it, and drift must compare at the decoded threshold.
        conf = self._decode_conf
        started = time.perf_counter()
        now = time.time()
        batch = buffer.assemble(picked)
        taken()
        if not len(batch):
            return batch, [], [], {}
        assembled = time.perf_counter()
        for meta in batch.metas:
            self._metrics.observe_stage("frame_wait", max(0.0, now - meta.capture_ts))
        iou, max_det = self._config.model.iou, self._config.model.max_detections
        raw = infer_batch(self._backend, batch.images, conf, iou, max_det)
        inferred = time.perf_counter()
        split = transfer_times(self._backend)
        self._metrics.observe_inference(inferred - assembled, len(batch), split)
        detections = decode_inferred(raw, batch.geometries, conf, iou, max_det)
        decoded = time.perf_counter()
        if self._drift is not None:
            # Before the buffer is reused: sampled frames are copied out for the shadow check.
            self._drift.observe(batch, detections, conf)
        tracked = time.perf_counter()
        events = self._tracking.track(
            (meta.camera_id, CameraFrame(meta.capture_ts, (meta.width, meta.height), dets, pixels))
            for meta, dets, pixels in zip(
                batch.metas, detections, map(FramePixels, batch.images, batch.geometries),
                strict=True,
            )
        )  # fmt: skip
        stages = {
            "preprocess": assembled - started,
            "decode_nms": decoded - inferred,
            "track": time.perf_counter() - tracked,
        }
        return batch, detections, events, stages

    def _publish(self, batch: Batch, detections: list[Detections], epochs: dict[str, int]) -> None:
        names = self._backend.class_names
        now = time.time()
        for meta, dets in zip(batch.metas, detections, strict=True):
            camera_filter = self._filters.get(meta.camera_id)
            if camera_filter is None:  # removed by a reload while its frame was in flight
                continue
            stage = self._tracking.get(meta.camera_id)
            if stage is None or stage.config.publish_detections:
                self._sink.publish_detections(
                    meta, camera_filter.apply(dets), names, now, epochs[meta.camera_id]
                )
            self._stats.record_processed(meta.camera_id, now - meta.capture_ts)
        self._batch_health.succeeded()

    async def _supervise(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for source in list(self._sources.values()):
                for change in source.poll():
                    self._on_state_change(change)
            await asyncio.sleep(_POLL_S)

    def _on_state_change(self, change: StateChange) -> None:
        # CameraSource logged it already.
        self._sink.publish_state(change.camera_id, change.state, change.reason)
