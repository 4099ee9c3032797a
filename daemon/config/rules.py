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
    AppConfig,
    CameraConfig,
    CaptureConfig,
    DriftConfig,
    ModelConfig,
    MonitoringConfig,
    MqttConfig,
    QueueConfig,
    TensorRTConfig,
    TlsConfig,
)
from daemon.config.tracking import RULES as TRACKING_RULES

# A camera id and the node name become MQTT topic levels and Prometheus label values.
CAMERA_ID: Final = re.compile(r"[A-Za-z0-9_-]+")
_NODE_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")
_TOPIC_PREFIX: Final = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_HOST: Final = re.compile(r"[^\s/]+")


@dataclass(frozen=True)
class Rule:
    """``expected`` completes "expected ..." in the error message; ``ok`` tests a typed value."""

    expected: str
    ok: Callable[[Any], bool]


def _int_at_least(low: int, what: str = "") -> Rule:
    return Rule(what or f"an integer >= {low}", lambda v: v >= low)


def _int_between(low: int, high: int, what: str = "") -> Rule:
    return Rule(what or f"an integer in {low}..{high}", lambda v: low <= v <= high)


def _is_positive(v: float) -> bool:
    return math.isfinite(v) and v > 0


def _is_fraction(v: float) -> bool:
    return 0 < v <= 1


_POSITIVE: Final = Rule("a positive number", _is_positive)
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
    return 1 <= low <= opt <= high


def _brightness_ok(pair: tuple[float, float]) -> bool:
    return 0 <= pair[0] < pair[1] <= 255


def _providers_ok(providers: tuple[str, ...]) -> bool:
    return bool(providers) and all(p.endswith("ExecutionProvider") for p in providers)


RULES: Final[dict[tuple[type, str], Rule]] = {
    (AppConfig, "node"): _matches(_NODE_NAME, "a node name of letters, digits, '.', '_' or '-'"),
    (CameraConfig, "id"): _matches(
        CAMERA_ID, "a camera id of letters, digits, '_' or '-' (it is an MQTT topic level)"
    ),
    (CameraConfig, "max_fps"): _POSITIVE,
    (CameraConfig, "confidence"): _FRACTION,
    (CameraConfig, "classes"): Rule(
        "a non-empty list of class names or class ids (>= 0)", _classes_ok
    ),
    (ModelConfig, "input_size"): Rule("a positive multiple of 32", lambda v: v > 0 and v % 32 == 0),
    (ModelConfig, "max_batch"): _int_at_least(1),
    (ModelConfig, "batch_timeout_ms"): _POSITIVE,
    (ModelConfig, "confidence"): _FRACTION,
    (ModelConfig, "iou"): _FRACTION,
    (ModelConfig, "max_detections"): _int_at_least(1),
    (ModelConfig, "providers"): Rule(
        "a non-empty list of ONNX Runtime provider names such as CPUExecutionProvider",
        _providers_ok,
    ),
    (ModelConfig, "intra_op_threads"): _int_at_least(
        0, "an integer >= 0 (0 lets the runtime decide)"
    ),
    (ModelConfig, "split_sessions"): _int_at_least(
        0, "an integer >= 0 (0: one per core, 1: no splitting)"
    ),
    (TensorRTConfig, "batch_profile"): Rule(
        "[min, opt, max] with 1 <= min <= opt <= max", _profile_ok
    ),
    (TensorRTConfig, "workspace_mb"): _int_at_least(1),
    (DriftConfig, "every_n_frames"): _int_at_least(1),
    (DriftConfig, "min_agreement"): _FRACTION,
    (DriftConfig, "calibrated_brightness"): Rule(
        "[low, high] with 0 <= low < high <= 255", _brightness_ok
    ),
    (MqttConfig, "host"): _matches(_HOST, "a host name or address"),
    (MqttConfig, "port"): _PORT,
    (MqttConfig, "qos"): _int_between(0, 2, "an MQTT QoS level 0, 1 or 2"),
    (MqttConfig, "keepalive_s"): _int_between(1, 65535),
    (MqttConfig, "topic_prefix"): _matches(
        _TOPIC_PREFIX, "topic levels of letters, digits, '.', '_' or '-' joined by '/'"
    ),
    (MqttConfig, "username"): Rule("a non-empty string", bool),
    (QueueConfig, "max_memory_messages"): _int_at_least(1),
    (QueueConfig, "spool_max_mb"): _int_at_least(1),
    (MonitoringConfig, "stats_interval_s"): _POSITIVE,
    (MonitoringConfig, "metrics_port"): _int_between(
        1, 65535, "a port number in 1..65535 (or null to disable)"
    ),
    (MonitoringConfig, "metrics_host"): _matches(_HOST, "a host name or address"),
    (CaptureConfig, "open_timeout_s"): _POSITIVE,
    (CaptureConfig, "read_timeout_s"): _POSITIVE,
    (CaptureConfig, "reconnect_initial_s"): _POSITIVE,
    (CaptureConfig, "reconnect_max_s"): _POSITIVE,
    (CaptureConfig, "stall_timeout_s"): _POSITIVE,
    (CaptureConfig, "max_width"): _int_at_least(1),
    (CaptureConfig, "max_height"): _int_at_least(1),
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
    return []
