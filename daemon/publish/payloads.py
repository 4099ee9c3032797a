"""JSON payloads published over MQTT; their JSON Schemas live in ``daemon/schemas/``
(``daemon.publish.schemas`` loads them).

Every JSON payload carries ``schema_version`` so consumers can reject a layout they do not
know instead of misreading it. Bump it on any incompatible change (and the schema files).
Every per-camera payload carries the camera's ``epoch`` (``daemon.publish.epochs``): with
``seq`` it is the de-duplication key ``(camera, epoch, seq)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import numpy as np

from daemon.capture.frame import FrameMeta
from daemon.capture.state import CameraState
from daemon.postprocess.classes import class_name
from daemon.postprocess.yolo import Detections
from daemon.publish.camera_stats import CameraStats, DriftStats, TrackingStats

if TYPE_CHECKING:
    # Types only: the tracker (scipy) stays unloaded for ``edgewatch detect``.
    from daemon.track.events import TrackEvent

SCHEMA_VERSION: Final = 2
# The events payload (``events.schema.json``) is versioned on its own.
EVENTS_SCHEMA_VERSION: Final = 1
# Node availability is plain text (not JSON) so Home Assistant-style availability topics work.
STATUS_ONLINE: Final = b"online"
STATUS_OFFLINE: Final = b"offline"


def _dumps(obj: dict[str, object]) -> bytes:
    # Compact separators: detections are the bulk of the traffic.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def detections_payload(
    meta: FrameMeta, epoch: int, detections: Detections, names: Sequence[str], publish_ts: float
) -> bytes:
    """``<camera>/detections``: one frame's detections, boxes in source-frame pixels."""
    return _dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "camera": meta.camera_id,
            "epoch": epoch,
            "seq": meta.seq,
            "capture_ts": round(meta.capture_ts, 6),
            "publish_ts": round(publish_ts, 6),
            "latency_ms": _ms(max(0.0, publish_ts - meta.capture_ts)),
            "frame": {"width": meta.width, "height": meta.height},
            "detections": detection_records(detections, names),
        }
    )


def detection_records(detections: Detections, names: Sequence[str]) -> list[dict[str, object]]:
    """JSON-ready detections: ``[{class_id, name, confidence, box: [x1, y1, x2, y2]}]``."""
    # Rounded and converted per array, not per number: this runs for every published frame.
    boxes = np.round(detections.boxes.astype(np.float64), 1).tolist()
    scores = np.round(detections.scores.astype(np.float64), 4).tolist()
    return [
        {"class_id": c, "name": class_name(names, c), "confidence": s, "box": b}
        for b, s, c in zip(boxes, scores, detections.class_ids.tolist(), strict=True)
    ]


def event_payload(event: TrackEvent, names: Sequence[str], publish_ts: float) -> bytes:
    """One event as compact JSON; times are epoch seconds of the frames' capture."""
    return _dumps(
        {
            "schema_version": EVENTS_SCHEMA_VERSION,
            "event_id": event.event_id,
            "type": event.type.value,
            "camera": event.camera,
            "track_id": event.track_id,
            "class_id": event.class_id,
            "name": class_name(names, event.class_id),
            "first_seen_ts": round(event.first_seen_ts, 6),
            "last_seen_ts": round(event.last_seen_ts, 6),
            "publish_ts": round(publish_ts, 6),
            "best_score": round(event.best_score, 4),
            "score": round(event.score, 4),
            "box": [round(max(v, 0.0), 1) for v in event.box],
            "frame": {"width": event.frame_size[0], "height": event.frame_size[1]},
            "zones": [{"name": n, "dwell_s": round(d, 3)} for n, d in event.zones],
            "crossings": [
                {
                    "line": c.line,
                    "direction": c.direction,
                    "class_id": c.class_id,
                    "name": class_name(names, c.class_id),
                    "ts": round(c.ts, 6),
                }
                for c in event.crossings
            ],
            "changes": [c.value for c in event.changes],
            "end_reason": event.end_reason,
        }
    )


def state_payload(
    camera_id: str, epoch: int, state: CameraState, reason: str | None, ts: float
) -> bytes:
    """``<camera>/state`` (retained). ``reason`` must already have credentials masked."""
    return _dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "camera": camera_id,
            "epoch": epoch,
            "state": state.value,
            "reason": reason,
            "ts": round(ts, 6),
        }
    )


def stats_payload(stats: CameraStats, epoch: int) -> bytes:
    """``<camera>/stats``: one monitoring interval of one camera."""
    return _dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "camera": stats.camera_id,
            "epoch": epoch,
            "ts": round(stats.ts, 6),
            "interval_s": round(stats.interval_s, 3),
            "state": stats.state.value,
            "input_fps": round(stats.input_fps, 2),
            "processed_fps": round(stats.processed_fps, 2),
            "dropped": stats.dropped,
            "dropped_total": stats.dropped_total,
            "frames_read_total": stats.frames_read_total,
            "processed_total": stats.processed_total,
            "reconnects_total": stats.reconnects_total,
            "latency_ms": {"p50": _ms(stats.latency_p50_s), "p95": _ms(stats.latency_p95_s)},
            "drift": None if stats.drift is None else _drift(stats.drift),
            "tracking": None if stats.tracking is None else _tracking(stats.tracking),
        }
    )


def _tracking(tracking: TrackingStats) -> dict[str, object]:
    return {
        "active_tracks": tracking.active_tracks,
        "tracks_total": tracking.tracks_total,
        "events_total": dict(tracking.events_total),
        "line_crossings": [
            {"line": c.line, "direction": c.direction, "name": c.class_name, "total": c.total}
            for c in tracking.line_crossings
        ],
        "zones": dict(tracking.zone_objects),
        "snapshots": {"sent": tracking.snapshots_sent, "dropped": tracking.snapshots_dropped},
    }


def _drift(drift: DriftStats) -> dict[str, object]:
    return {
        "agreement": None if drift.agreement is None else round(drift.agreement, 4),
        "samples": drift.samples,
        "brightness": None if drift.brightness is None else round(drift.brightness, 1),
        "brightness_in_range": drift.brightness_in_range,
    }
