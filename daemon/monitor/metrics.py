"""Prometheus metrics and ``/healthz`` over a small stdlib HTTP server.

The daemon owns its ``CollectorRegistry`` (never prometheus-client's global default).
Per-camera series are produced at scrape time from the latest stats snapshot, so a camera
removed by a hot reload disappears instead of leaving stale series behind. Labels carry the
camera id only, never a URL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.capture.state import CameraState
from daemon.infer.backend import TransferTimes
from daemon.publish.camera_stats import CameraStats
from daemon.publish.connection import BrokerState
from daemon.publish.counters import PublisherCounters
from daemon.publish.outbox import SpoolState

log = logging.getLogger(__name__)

# Fine enough between 50 ms and 1 s (CPU batches) for a meaningful p95 by interpolation.
_BATCH_BUCKETS: Final = (
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
)
# The steps a batch goes through, in order; each is a label of ``edgewatch_stage_seconds``.
STAGES: Final = (
    "frame_wait", "preprocess", "upload", "inference", "download", "decode_nms", "track", "publish",
)  # fmt: skip
# From tens of microseconds (one camera's NMS) to seconds (a stalled frame's wait).
_STAGE_BUCKETS: Final = (
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
# Bounds on the HTTP side: connections served at once (one thread each; more are answered
# 503 at once, without a thread), and how long a client may take to send its request.
MAX_CONNECTIONS: Final = 8
_REQUEST_TIMEOUT_S: Final = 5.0
_BUSY: Final = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
)


@dataclass(frozen=True)
class Health:
    """What ``/healthz`` reports: 200 when ``healthy``, else 503; ``detail`` goes in the JSON."""

    healthy: bool
    detail: Mapping[str, object] = field(default_factory=dict)


class DaemonMetrics(Collector):
    """The daemon's metrics, in its own registry."""

    def __init__(self, publisher: Callable[[], PublisherCounters] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._cameras: dict[str, CameraStats] = {}
        self.batch_latency = Histogram(
            "edgewatch_backend_batch_latency_seconds",
            "The backend's call for one batch, transfers included (preprocess excluded).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "edgewatch_backend_batch_size",
            "Frames per inference batch.",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "edgewatch_stage_seconds",
            "Time in each step of a batch: frame_wait (capture to the start of the batch, per "
            "frame), preprocess (letterbox into the batch), upload (batch to the device), "
            "inference (the device's compute; the whole backend call where the backend does "
            "not time its transfers), download (results to the host), decode_nms, track, "
            "publish (payloads queued for the sink). upload and download are observed only "
            "for backends that time them (GPU).",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self._stages = {stage: self.stage_seconds.labels(stage=stage) for stage in STAGES}
        self.registry.register(self)
        if publisher is not None:
            self.registry.register(PublisherMetrics(publisher))

    def update_cameras(self, stats: Mapping[str, CameraStats]) -> None:
        """Replace the per-camera snapshot (call once per stats interval)."""
        with self._lock:
            self._cameras = dict(stats)

    def observe_inference(self, call_s: float, size: int, split: TransferTimes | None) -> None:
        """One backend call of ``size`` frames taking ``call_s``: the batch histograms, and
        the upload, inference (compute) and download stages from the backend's ``split``,
        or, without one, the whole call as the inference stage."""
        self.batch_latency.observe(call_s)
        self.batch_size.observe(size)
        if split is None:
            self._stages["inference"].observe(call_s)
            return
        self._stages["upload"].observe(split.upload_s)
        self._stages["inference"].observe(split.compute_s)
        self._stages["download"].observe(split.download_s)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One batch's (or, for ``frame_wait``, one frame's) time in ``stage`` (of STAGES)."""
        self._stages[stage].observe(seconds)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cameras = list(self._cameras.values())
        yield from _camera_metrics(cameras)


class PublisherMetrics(Collector):
    """The publisher's delivery counters and state, read at scrape time."""

    def __init__(self, publisher: Callable[[], PublisherCounters]) -> None:
        self._publisher = publisher

    def collect(self) -> Iterator[Metric]:
        yield from _publisher_metrics(self._publisher())


def _camera_metrics(cameras: list[CameraStats]) -> Iterator[Metric]:
    def gauge(name: str, doc: str, value: Callable[[CameraStats], float | None]) -> Metric:
        family = GaugeMetricFamily(name, doc, labels=["camera"])
        for s in cameras:
            v = value(s)
            if v is not None:
                family.add_metric([s.camera_id], v)
        return family

    def counter(name: str, doc: str, value: Callable[[CameraStats], int]) -> Metric:
        family = CounterMetricFamily(name, doc, labels=["camera"])
        for s in cameras:
            family.add_metric([s.camera_id], value(s))
        return family

    yield gauge("edgewatch_camera_input_fps", "Frames read per second.", lambda s: s.input_fps)
    yield gauge(
        "edgewatch_camera_processed_fps", "Frames published per second.", lambda s: s.processed_fps
    )
    yield gauge(
        "edgewatch_camera_latency_p50_seconds",
        "Capture-to-publish latency, median.",
        lambda s: s.latency_p50_s,
    )
    yield gauge(
        "edgewatch_camera_latency_p95_seconds",
        "Capture-to-publish latency, 95th percentile.",
        lambda s: s.latency_p95_s,
    )
    yield gauge(
        "edgewatch_camera_streaming",
        "1 while the camera is streaming.",
        lambda s: 1.0 if s.state is CameraState.STREAMING else 0.0,
    )
    yield counter(
        "edgewatch_camera_frames_read",
        "Frames read from the source.",
        lambda s: s.frames_read_total,
    )
    yield counter(
        "edgewatch_camera_frames_dropped",
        "Frames read but never inferred (a newer frame was taken instead).",
        lambda s: s.dropped_total,
    )
    yield counter(
        "edgewatch_camera_frames_processed", "Frames published.", lambda s: s.processed_total
    )
    yield counter("edgewatch_camera_reconnects", "Source reconnects.", lambda s: s.reconnects_total)
    yield from _tracking_metrics(cameras)


def _tracking_metrics(cameras: list[CameraStats]) -> Iterator[Metric]:
    tracked = [(s.camera_id, s.tracking) for s in cameras if s.tracking is not None]
    active = GaugeMetricFamily(
        "edgewatch_tracks_active", "Tracked objects reported and not ended.", labels=["camera"]
    )
    events = CounterMetricFamily(
        "edgewatch_track_events", "Object events published.", labels=["camera", "type"]
    )
    crossings = CounterMetricFamily(
        "edgewatch_line_crossings",
        "Line crossings, once per track, line and direction.",
        labels=["camera", "line", "direction", "class"],
    )
    zones = GaugeMetricFamily(
        "edgewatch_zone_objects", "Tracked objects in a zone now.", labels=["camera", "zone"]
    )
    for cid, t in tracked:
        active.add_metric([cid], t.active_tracks)
        for kind, total in t.events_total.items():
            events.add_metric([cid, kind], total)
        for c in t.line_crossings:
            crossings.add_metric([cid, c.line, c.direction, c.class_name], c.total)
        for zone, count in t.zone_objects.items():
            zones.add_metric([cid, zone], count)
    yield from (active, events, crossings, zones)


def publisher_health(c: PublisherCounters) -> dict[str, object]:
    """The publisher's part of ``/healthz``: can messages leave, and if not, why."""
    return {
        "can_publish": c.can_publish,
        "broker": c.broker.value,
        "cause": c.broker_cause,
        "pump_ok": c.pump_ok,
        "spool": c.spool.value,
        "queued": c.queued,
        "client_id_conflict": c.takeover_suspected,
    }


def _publisher_metrics(c: PublisherCounters) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "edgewatch_mqtt_connected", "1 while connected to the broker.", value=float(c.connected)
    )
    state = GaugeMetricFamily(
        "edgewatch_mqtt_broker_state",
        "1 for the broker connection's current state.",
        labels=["state"],
    )
    for candidate in BrokerState:
        state.add_metric([candidate.value], float(candidate is c.broker))
    yield state
    yield GaugeMetricFamily(
        "edgewatch_mqtt_pump_ok", "1 while the publishing thread works.", value=float(c.pump_ok)
    )
    spool = GaugeMetricFamily(
        "edgewatch_mqtt_spool_state", "1 for the disk spool's current state.", labels=["state"]
    )
    for candidate_spool in SpoolState:
        spool.add_metric([candidate_spool.value], float(candidate_spool is c.spool))
    yield spool
    yield GaugeMetricFamily(
        "edgewatch_mqtt_client_id_conflict",
        "1 while another client seems to keep taking over our client id.",
        value=float(c.takeover_suspected),
    )
    yield CounterMetricFamily(
        "edgewatch_mqtt_connect_failures",
        "Failed connection attempts (DNS, TCP, TLS, refused by the broker).",
        value=c.connect_failures,
    )
    yield CounterMetricFamily(
        "edgewatch_mqtt_spool_rejected",
        "Spool rows discarded: damaged, or for a topic outside the node's own.",
        value=c.spool_rejected,
    )
    yield GaugeMetricFamily(
        "edgewatch_mqtt_queue_depth", "Messages waiting (memory + spool).", value=c.queued
    )
    yield GaugeMetricFamily(
        "edgewatch_mqtt_inflight", "Messages awaiting acknowledgement.", value=c.inflight
    )
    yield GaugeMetricFamily("edgewatch_mqtt_spool_bytes", "Disk spool size.", value=c.spool_bytes)
    yield CounterMetricFamily(
        "edgewatch_mqtt_published", "Messages handed to the client.", value=c.published
    )
    yield CounterMetricFamily(
        "edgewatch_mqtt_acknowledged", "Messages acknowledged.", value=c.acknowledged
    )
    yield CounterMetricFamily(
        "edgewatch_mqtt_dropped",
        "Oldest messages dropped at a queue bound.",
        value=c.dropped_overflow,
    )
    yield CounterMetricFamily(
        "edgewatch_mqtt_spooled", "Messages written to the disk spool.", value=c.spooled
    )


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once; errors are logged."""

    daemon_threads = True
    # Re-binding the same port right after a restart must work.
    allow_reuse_address = True
    # A burst of connections waits in the kernel's accept queue (and is then served or
    # answered busy, in order) instead of having its handshakes dropped and retried.
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
    ) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # Answered from the accepting thread: non-blocking, so a client that does not
            # read cannot stall it.
            request.setblocking(False)
            with contextlib.suppress(OSError):
                request.send(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response is routine; never a raw traceback on stderr.
        exc = sys.exc_info()[1]
        level = logging.DEBUG if isinstance(exc, ConnectionError) else logging.WARNING
        log.log(
            level,
            "metrics http request failed",
            extra={"client": str(client_address[0]), "error": f"{type(exc).__name__}: {exc}"},
            exc_info=level == logging.WARNING,
        )


class MetricsServer:
    """``/metrics`` and ``/healthz`` on ``host:port`` (port 0 picks a free one: see ``port``)."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, health: Callable[[], Health]
    ) -> None:
        self._server = _Server((host, port), _make_handler(registry, health), MAX_CONNECTIONS)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="metrics-http",
            daemon=True,
        )
        self._thread.start()
        log.info(
            "metrics endpoint listening",
            extra={"address": f"{self._server.server_address[0]!s}:{self.port}"},
        )

    def stop(self, timeout: float = 2.0) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout)
            self._thread = None
        self._server.server_close()


def _make_handler(
    registry: CollectorRegistry, health: Callable[[], Health]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = _REQUEST_TIMEOUT_S

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(HTTPStatus.OK, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                try:
                    state = health()
                except Exception as exc:  # a broken health probe is unhealthy, not a crash
                    state = Health(False, {"error": f"{type(exc).__name__}: {exc}"})
                body = json.dumps(
                    {"status": "ok" if state.healthy else "unhealthy", **state.detail}, default=str
                ).encode()
                code = HTTPStatus.OK if state.healthy else HTTPStatus.SERVICE_UNAVAILABLE
                self._send(code, body, "application/json")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

        def _send(self, code: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("metrics http request", extra={"request": format % args})

    return Handler
