"""The ``<camera>/events`` JSON payload (schema: ``daemon/schemas/events.schema.json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from daemon.postprocess.classes import class_name
from daemon.track.events import TrackEvent

EVENTS_SCHEMA_VERSION: Final = 1


def event_payload(event: TrackEvent, names: Sequence[str], publish_ts: float) -> bytes:
    """One event as compact JSON; times are epoch seconds of the frames' capture."""
    return json.dumps(
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
        },
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
