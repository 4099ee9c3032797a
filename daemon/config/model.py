"""Typed configuration objects.

Every part of the daemon receives one of these frozen dataclasses, never a raw dict.
``daemon.config.load`` builds them from YAML and validates every field; the defaults
here are the embedded defaults an operator gets for keys they leave out.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Final

from daemon.config.secrets import Secret, mask_url
from daemon.config.tracking import LineConfig, TrackingConfig, ZoneConfig


class BackendKind(str, Enum):
    """Inference runtimes behind the one ``Backend`` protocol."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    TORCH = "torch"


class TensorRTRuntime(str, Enum):
    """Which NVIDIA runtime builds and runs the engine: TensorRT (JetPack, x86 data-centre
    GPUs) or TensorRT-RTX (pip-installable, Turing and newer consumer/workstation GPUs)."""

    TENSORRT = "tensorrt"
    TENSORRT_RTX = "tensorrt-rtx"


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Decoder(str, Enum):
    """Who decodes a camera's video: OpenCV's FFmpeg backend on the CPU, OpenCV's
    GStreamer backend with a Jetson's hardware decoder (``nvv4l2decoder``), or a dGPU's
    NVDEC through PyNvVideoCodec straight into the torch backend's GPU memory."""

    FFMPEG = "ffmpeg"
    JETSON = "jetson"
    NVDEC = "nvdec"


class VideoCodec(str, Enum):
    """A camera's compressed video, for the jetson decoder's explicit parser and depayloader
    (FFmpeg finds the codec by itself)."""

    H264 = "h264"
    H265 = "h265"


# Files the jetson pipeline reads: its demuxer is qtdemux (MP4 and QuickTime containers).
JETSON_FILE_SUFFIXES: Final = (".mp4", ".m4v", ".mov")
# Streams the jetson pipeline reads: its source is rtspsrc.
JETSON_STREAM_SCHEMES: Final = ("rtsp://", "rtsps://")


@dataclass(frozen=True)
class CameraConfig:
    """One camera: ``url`` is ``rtsp://...``, a video file path or a V4L2 device."""

    id: str
    url: Secret
    enabled: bool = True
    max_fps: float | None = None
    confidence: float | None = None
    # Class filter by name or by id; None means every class.
    classes: tuple[str | int, ...] | None = None
    # Replaces the top-level ``tracking`` for this camera; None inherits it.
    tracking: TrackingConfig | None = None
    zones: tuple[ZoneConfig, ...] = ()
    lines: tuple[LineConfig, ...] = ()
    decoder: Decoder = Decoder.FFMPEG
    # Only with decoder jetson; None there means H.264.
    codec: VideoCodec | None = None

    @property
    def display_url(self) -> str:
        """The URL with credentials masked: the only form that may be logged or published."""
        return mask_url(self.url.reveal())


@dataclass(frozen=True)
class TensorRTConfig:
    runtime: TensorRTRuntime = TensorRTRuntime.TENSORRT
    precision: Precision = Precision.FP16
    engine_cache_dir: Path = Path("/var/cache/edgewatch/engines")
    build_on_start: bool = False
    # Batch profile MIN:OPT:MAX; None derives 1:max_batch:max_batch.
    batch_profile: tuple[int, int, int] | None = None
    workspace_mb: int = 1024
    # Fall back to ONNX Runtime only when the operator asked for it.
    fallback_to_onnxruntime: bool = False


@dataclass(frozen=True)
class DriftConfig:
    """Shadow FP32 inference that watches an INT8 model for accuracy drift."""

    enabled: bool = False
    reference_model: Path | None = None
    every_n_frames: int = 100
    min_agreement: float = 0.9
    # Brightness range (mean luma 0..255) the calibration set covered; None reads it from the model.
    calibrated_brightness: tuple[float, float] | None = None


@dataclass(frozen=True)
class ModelConfig:
    path: Path
    backend: BackendKind = BackendKind.ONNXRUNTIME
    input_size: int = 640
    max_batch: int = 8
    # Dispatch a partial batch once its oldest frame has waited this long.
    batch_timeout_ms: float = 15.0
    # GPU backends (tensorrt, torch): batches in flight at once, each on its own CUDA stream
    # with its own buffers and worker thread. ONNX Runtime runs one batch at a time.
    inflight_batches: int = 2
    # Pipeline processes: each loads the model and serves a share of the cameras, so one
    # Python process is not the ceiling (see daemon/workers/pool.py). 1 runs it in the
    # daemon's own process.
    workers: int = 1
    confidence: float = 0.25
    iou: float = 0.7
    max_detections: int = 300
    # ONNX Runtime execution providers in priority order.
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # 0 lets the runtime decide.
    intra_op_threads: int = 0
    # ONNX Runtime on CPU: run a batch as this many equal slices at once, each in its own
    # session on its share of the threads (0: one per available core, at most max_batch;
    # 1: one session parallelises each operator instead). See onnxruntime_backend.py.
    split_sessions: int = 0
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)


@dataclass(frozen=True)
class TlsConfig:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


@dataclass(frozen=True)
class QueueConfig:
    """Bounded buffering of outgoing MQTT messages while the broker is unreachable."""

    max_memory_messages: int = 10_000
    spool_dir: Path | None = None
    spool_max_mb: int = 256


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    topic_prefix: str = "edgewatch"
    qos: int = 1
    keepalive_s: int = 30
    username: str | None = None
    password: Secret | None = None
    tls: TlsConfig | None = None
    queue: QueueConfig = field(default_factory=QueueConfig)


@dataclass(frozen=True)
class MonitoringConfig:
    stats_interval_s: float = 5.0
    # None disables the Prometheus/healthz HTTP endpoint.
    metrics_port: int | None = 9108
    metrics_host: str = "127.0.0.1"


@dataclass(frozen=True)
class CaptureConfig:
    """Timeouts and reconnect policy shared by every camera."""

    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    reconnect_initial_s: float = 0.5
    # Short cap: a camera that comes back is streaming again within seconds, and a retry
    # every few seconds costs one process's failed open.
    reconnect_max_s: float = 5.0
    # A reader that reports nothing for this long is killed and restarted.
    stall_timeout_s: float = 20.0
    # Frames larger than this trigger a reader restart with a bigger shared buffer.
    max_width: int = 1920
    max_height: int = 1080


@dataclass(frozen=True)
class AppConfig:
    cameras: tuple[CameraConfig, ...]
    model: ModelConfig
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    node: str = field(default_factory=socket.gethostname)
    source: Path | None = None

    @property
    def enabled_cameras(self) -> tuple[CameraConfig, ...]:
        return tuple(c for c in self.cameras if c.enabled)

    def tracking_of(self, camera: CameraConfig) -> TrackingConfig:
        """The tracking settings in force for ``camera``."""
        return camera.tracking if camera.tracking is not None else self.tracking
