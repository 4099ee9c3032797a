"""Value constraints of config fields, beyond their Python type.

Each rule carries the phrase used in its error message, so a wrong type and an out-of-range
value read the same way: ``expected a number in (0, 1], got 'high'`` / ``..., got 1.5``.
Cross-field constraints (a pair of TLS files, batch profile versus max batch) are in
``class_problems``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from daemon.config.model import (
    JETSON_FILE_SUFFIXES,
    JETSON_STREAM_SCHEMES,
    AppConfig,
    CameraConfig,
    CaptureConfig,
    Decoder,
    DriftConfig,
    ModelConfig,
    MonitoringConfig,
    MqttConfig,
    QueueConfig,
    TensorRTConfig,
    TlsConfig,
)
from daemon.config.tracking import RULES as TRACKING_RULES

# A camera id and the node name become MQTT topic levels and Prometheus label values; the
# length caps keep a topic far below MQTT's 65,535-byte limit and labels readable.
CAMERA_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NODE_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TOPIC_PREFIX: Final = re.compile(r"(?=.{1,128}$)[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_HOST: Final = re.compile(r"[^\s/]{1,253}")
# The metrics endpoint is an IPv4 socket server: no IPv6 literal.
_IPV4_HOST: Final = re.compile(r"[^\s/:\[\]]{1,253}")
# Each camera is a reader process (a decoder, a shared frame buffer): far beyond what one
# box can run, and a bound on the work a config file can cause.
MAX_CAMERAS: Final = 256
# Upper bounds, each with the reason an operator reads in the error message.
MAX_BATCH: Final = 64  # also the TensorRT profile's cap
_BATCH_WHY: Final = "one frame per camera; larger batches only add memory and latency"
_THREADS_WHY: Final = "more threads than cores only contend"
# OpenCV takes its open/read timeouts as a 32-bit count of milliseconds; an hour is far
# beyond any useful wait and far below that limit. FFmpeg reads 0 as "no timeout".
_TIMEOUT_WHY: Final = "at most an hour; 0 would mean no timeout"


@dataclass(frozen=True)
class Rule:
    """``expected`` completes "expected ..." in the error message; ``ok`` tests a typed value."""

    expected: str
    ok: Callable[[Any], bool]


def _int_between(low: int, high: int, what: str = "") -> Rule:
    return Rule(what or f"an integer in {low}..{high}", lambda v: low <= v <= high)


def _number_in(low: float, high: float, why: str, *, open_low: bool = False) -> Rule:
    """A number in ``[low, high]`` (``(low, high]`` with ``open_low``), with the reason."""
    bracket = "(" if open_low else "["

    def ok(v: float) -> bool:
        return math.isfinite(v) and (low < v if open_low else low <= v) and v <= high

    return Rule(f"a number in {bracket}{low:g}, {high:g}] ({why})", ok)


def _is_fraction(v: float) -> bool:
    return 0 < v <= 1


_SECONDS: Final = _number_in(0.1, 3600, _TIMEOUT_WHY)
_FRACTION: Final = Rule("a number in (0, 1]", _is_fraction)
_PORT: Final = _int_between(1, 65535, "a port number in 1..65535")


def _matches(pattern: re.Pattern[str], what: str) -> Rule:
    return Rule(what, lambda v: pattern.fullmatch(v) is not None)


def _classes_ok(classes: tuple[str | int, ...]) -> bool:
    return bool(classes) and all(
        (isinstance(c, int) and c >= 0) or (isinstance(c, str) and c.strip()) for c in classes
    )


def _profile_ok(profile: tuple[int, int, int]) -> bool:
    low, opt, high = profile
    return 1 <= low <= opt <= high <= MAX_BATCH


def _brightness_ok(pair: tuple[float, float]) -> bool:
    return 0 <= pair[0] < pair[1] <= 255


def _providers_ok(providers: tuple[str, ...]) -> bool:
    return bool(providers) and all(p.endswith("ExecutionProvider") for p in providers)


RULES: Final[dict[tuple[type, str], Rule]] = {
    (AppConfig, "node"): _matches(
        _NODE_NAME, "a node name of up to 64 letters, digits, '.', '_' or '-'"
    ),
    (CameraConfig, "id"): _matches(
        CAMERA_ID,
        "a camera id of up to 64 letters, digits, '_' or '-' (it is an MQTT topic level)",
    ),
    (CameraConfig, "max_fps"): _number_in(0, 240, "no camera sends faster", open_low=True),
    (CameraConfig, "confidence"): _FRACTION,
    (CameraConfig, "classes"): Rule(
        "a non-empty list of class names or class ids (>= 0)", _classes_ok
    ),
    (ModelConfig, "input_size"): Rule(
        "a multiple of 32 in 32..2048 (YOLOv8 strides; 2048 is ten times the work of 640)",
        lambda v: 32 <= v <= 2048 and v % 32 == 0,
    ),
    (ModelConfig, "max_batch"): _int_between(1, MAX_BATCH, f"an integer in 1..64 ({_BATCH_WHY})"),
    (ModelConfig, "batch_timeout_ms"): _number_in(
        0, 1000, "a frame waiting longer is stale", open_low=True
    ),
    (ModelConfig, "inflight_batches"): _int_between(
        1, 8, "an integer in 1..8 (each batch in flight holds its own GPU buffers)"
    ),
    (ModelConfig, "workers"): _int_between(
        1, 16, "an integer in 1..16 (each worker holds its own copy of the model)"
    ),
    (ModelConfig, "confidence"): _FRACTION,
    (ModelConfig, "iou"): _FRACTION,
    (ModelConfig, "max_detections"): _int_between(
        1, 1000, "an integer in 1..1000 (each detection is part of one MQTT message)"
    ),
    (ModelConfig, "providers"): Rule(
        "a non-empty list of ONNX Runtime provider names such as CPUExecutionProvider",
        _providers_ok,
    ),
    (ModelConfig, "intra_op_threads"): _int_between(
        0, 64, f"an integer in 0..64 (0 lets the runtime decide; {_THREADS_WHY})"
    ),
    (ModelConfig, "split_sessions"): _int_between(
        0, 64, f"an integer in 0..64 (0: one per core, 1: no splitting; {_THREADS_WHY})"
    ),
    (TensorRTConfig, "batch_profile"): Rule(
        f"[min, opt, max] with 1 <= min <= opt <= max <= {MAX_BATCH} ({_BATCH_WHY})", _profile_ok
    ),
    (TensorRTConfig, "workspace_mb"): _int_between(
        1, 65536, "an integer in 1..65536 (MB of GPU memory; no GPU has more)"
    ),
    (DriftConfig, "every_n_frames"): _int_between(
        1, 1_000_000, "an integer in 1..1000000 (rarer checks would never run)"
    ),
    (DriftConfig, "min_agreement"): _FRACTION,
    (DriftConfig, "calibrated_brightness"): Rule(
        "[low, high] with 0 <= low < high <= 255", _brightness_ok
    ),
    (MqttConfig, "host"): _matches(_HOST, "a host name or address"),
    (MqttConfig, "port"): _PORT,
    (MqttConfig, "qos"): _int_between(0, 2, "an MQTT QoS level 0, 1 or 2"),
    (MqttConfig, "keepalive_s"): _int_between(1, 65535),
    (MqttConfig, "topic_prefix"): _matches(
        _TOPIC_PREFIX,
        "up to 128 characters: topic levels of letters, digits, '.', '_' or '-' joined by '/'",
    ),
    (MqttConfig, "username"): Rule("a non-empty string", bool),
    (QueueConfig, "max_memory_messages"): _int_between(
        1, 1_000_000, "an integer in 1..1000000 (each message stays in memory)"
    ),
    (QueueConfig, "spool_max_mb"): _int_between(
        1, 1_048_576, "an integer in 1..1048576 (MB, up to 1 TiB of disk)"
    ),
    (MonitoringConfig, "stats_interval_s"): _number_in(
        0.5, 86400, "each interval publishes one message per camera"
    ),
    (MonitoringConfig, "metrics_port"): _int_between(
        1, 65535, "a port number in 1..65535 (or null to disable)"
    ),
    (MonitoringConfig, "metrics_host"): _matches(
        _IPV4_HOST, "a host name or IPv4 address (the metrics endpoint listens on IPv4)"
    ),
    (CaptureConfig, "open_timeout_s"): _SECONDS,
    (CaptureConfig, "read_timeout_s"): _SECONDS,
    (CaptureConfig, "reconnect_initial_s"): _SECONDS,
    (CaptureConfig, "reconnect_max_s"): _SECONDS,
    (CaptureConfig, "stall_timeout_s"): _number_in(1, 3600, "at most an hour of silence"),
    (CaptureConfig, "max_width"): _int_between(
        16, 7680, "an integer in 16..7680 (8K; the shared buffer holds frames of this size)"
    ),
    (CaptureConfig, "max_height"): _int_between(
        16, 4320, "an integer in 16..4320 (8K; the shared buffer holds frames of this size)"
    ),
    **{key: Rule(*spec) for key, spec in TRACKING_RULES.items()},
}


def class_problems(obj: object) -> list[tuple[str, str]]:
    """Cross-field problems of a built config object, as (field name, message) pairs."""
    if isinstance(obj, ModelConfig):
        profile = obj.tensorrt.batch_profile
        if profile is not None and profile[2] < obj.max_batch:
            return [
                ("max_batch", f"is {obj.max_batch}, above tensorrt.batch_profile max {profile[2]}")
            ]
    elif isinstance(obj, TlsConfig):
        if (obj.cert_file is None) != (obj.key_file is None):
            missing = "key_file" if obj.key_file is None else "cert_file"
            return [(missing, "required: a client certificate needs both cert_file and key_file")]
    elif isinstance(obj, MqttConfig):
        if obj.password is not None and obj.username is None:
            return [("username", "required when a password is set")]
    elif isinstance(obj, DriftConfig):
        if obj.enabled and obj.reference_model is None:
            return [("reference_model", "required when enabled is true (the FP32 model)")]
    elif isinstance(obj, CaptureConfig) and obj.reconnect_max_s < obj.reconnect_initial_s:
        return [
            (
                "reconnect_max_s",
                f"must be >= reconnect_initial_s ({obj.reconnect_initial_s:g}), "
                f"got {obj.reconnect_max_s:g}",
            )
        ]
    return _decoder_problems(obj)


def _decoder_problems(camera: object) -> list[tuple[str, str]]:
    """A codec only the jetson decoder reads; a source the jetson pipeline cannot open, or
    NVDEC may not read."""
    if not isinstance(camera, CameraConfig):
        return []
    url = camera.url.reveal()
    if camera.decoder is not Decoder.JETSON:
        if camera.codec is not None:
            return [("codec", "only read with decoder: jetson (FFmpeg finds the codec itself)")]
        if camera.decoder is Decoder.NVDEC and url.startswith("/dev/"):
            # NVDEC takes encoded packets, which OpenCV reads from files and streams only: its
            # V4L2 backend hands out decoded frames.
            return [("decoder", "nvdec reads video files and streams, not devices; use ffmpeg")]
        return []
    if url.lower().startswith(JETSON_STREAM_SCHEMES) or url.lower().endswith(JETSON_FILE_SUFFIXES):
        return []
    streams = ", ".join(JETSON_STREAM_SCHEMES)
    files = ", ".join(JETSON_FILE_SUFFIXES)
    return [
        (
            "decoder",
            f"jetson reads {streams} streams and {files} files; use ffmpeg for this camera",
        )
    ]
