"""The ``Sink`` interface is all the pipeline needs: a second implementation that keeps what
it is handed in memory, driven by a real ``Pipeline`` (a looping video file as the camera, the
real model on ONNX Runtime), receives detections, camera state, stats, events and snapshots."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from daemon.capture.frame import FrameMeta
from daemon.capture.state import CameraState
from daemon.config.model import AppConfig, CameraConfig, ModelConfig, MonitoringConfig
from daemon.config.secrets import Secret
from daemon.config.tracking import SnapshotConfig, TrackingConfig
from daemon.infer.factory import load_backend
from daemon.monitor.metrics import DaemonMetrics
from daemon.monitor.stats import StatsCollector
from daemon.pipeline import Pipeline
from daemon.postprocess.yolo import Detections
from daemon.publish.camera_stats import CameraStats
from daemon.publish.counters import PublisherCounters
from daemon.publish.sink import Sink
from daemon.track.events import EventType, TrackEvent

CAMERA = "cam"
# Waiting for the pipeline's output is bounded so a broken pipeline fails instead of hanging.
_DEADLINE_S = 120.0


class RecordingSink:
    """Keeps everything it is handed (from the loop, batch workers and the encoder)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = False
        self.epochs: dict[str, int] = {}
        self.removed: list[str] = []
        self.detections: list[tuple[FrameMeta, Detections, int | None]] = []
        self.states: list[tuple[str, CameraState]] = []
        self.stats: list[CameraStats] = []
        self.events: list[TrackEvent] = []
        self.snapshots: list[tuple[str, bytes]] = []

    def start(self) -> None:
        self.running = True

    def stop(self, timeout: float = 5.0) -> None:
        self.running = False

    def start_camera(self, camera_id: str) -> int:
        with self._lock:
            self.epochs[camera_id] = self.epochs.get(camera_id, 0) + 1
            return self.epochs[camera_id]

    def remove_camera(self, camera_id: str) -> None:
        with self._lock:
            self.removed.append(camera_id)

    def publish_detections(
        self,
        meta: FrameMeta,
        detections: Detections,
        names: Sequence[str],
        publish_ts: float,
        epoch: int | None = None,
    ) -> None:
        with self._lock:
            self.detections.append((meta, detections, epoch))

    def publish_state(self, camera_id: str, state: CameraState, reason: str | None) -> None:
        with self._lock:
            self.states.append((camera_id, state))

    def publish_stats(self, camera_id: str, stats: CameraStats) -> None:
        with self._lock:
            self.stats.append(stats)

    def publish_events(
        self, events: Sequence[TrackEvent], names: Sequence[str], publish_ts: float
    ) -> None:
        with self._lock:
            self.events.extend(events)

    def publish_snapshot(self, camera_id: str, payload: bytes) -> None:
        with self._lock:
            self.snapshots.append((camera_id, payload))

    def counters(self) -> PublisherCounters:
        with self._lock:
            handed = len(self.detections) + len(self.stats) + len(self.events)
        return PublisherCounters(self.running, handed, handed, 0, 0, 0, 0, 0)

    def enough(self) -> bool:
        """Tracked people, an interval's stats of processed frames, and a snapshot."""
        with self._lock:
            return (
                any(e.type is EventType.NEW for e in self.events)
                and any(s.processed > 0 and s.tracking is not None for s in self.stats)
                and bool(self.snapshots)
            )


def test_a_second_sink_receives_everything_a_real_pipeline_produces(
    model_onnx: Path, videos: list[Path]
) -> None:
    video = next(v for v in videos if v.name == "pedestrians_street_720p.mp4")
    tracking = TrackingConfig(enabled=True, min_hits=2, snapshots=SnapshotConfig(enabled=True))
    camera = CameraConfig(id=CAMERA, url=Secret(str(video)), classes=("person",))
    config = AppConfig(
        cameras=(camera,),
        model=ModelConfig(path=model_onnx, max_batch=1),
        monitoring=MonitoringConfig(stats_interval_s=0.5, metrics_port=None),
        tracking=tracking,
        node="test",
    )
    backend = load_backend(config.model)
    sink = RecordingSink()
    recorder: Sink = sink  # the protocol check: RecordingSink is a Sink
    pipeline = Pipeline(config, backend, recorder, StatsCollector(), DaemonMetrics(sink.counters))
    health: list[bool] = []

    async def main() -> None:
        stop = asyncio.Event()
        sink.start()
        pipeline.add_camera(camera)
        running = asyncio.create_task(pipeline.run(stop))
        deadline = time.monotonic() + _DEADLINE_S
        while not sink.enough() and time.monotonic() < deadline and not running.done():
            await asyncio.sleep(0.2)
        health.append(pipeline.health().healthy)
        pipeline.remove_camera(CAMERA)
        stop.set()
        await running
        sink.stop()

    try:
        asyncio.run(main())
    finally:
        backend.close()

    assert sink.enough()
    assert health == [True]
    assert (CAMERA, CameraState.STREAMING) in sink.states
    # Detections carry the epoch the camera got, in reading order, and only people.
    assert sink.detections
    assert {(m.camera_id, epoch) for m, _, epoch in sink.detections} == {(CAMERA, 1)}
    seqs = [m.seq for m, _, _ in sink.detections]
    assert seqs == sorted(seqs)
    assert any(len(d) for _, d, _ in sink.detections)
    assert all(set(d.class_ids.tolist()) <= {0} for _, d, _ in sink.detections)
    # Removing the camera ended every track it had reported, and forgot the camera.
    new = {e.track_id for e in sink.events if e.type is EventType.NEW}
    ended = {e.track_id for e in sink.events if e.type is EventType.END}
    assert new
    assert new == ended
    assert sink.removed == [CAMERA]
    stats = [s for s in sink.stats if s.processed > 0]
    assert all(s.camera_id == CAMERA for s in stats)
    assert all(s.tracking is not None for s in stats)
    camera_id, payload = sink.snapshots[0]
    assert camera_id == CAMERA
    assert json.loads(payload)["event_id"] in {e.event_id for e in sink.events}
