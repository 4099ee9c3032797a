"""Tracking counts in the stats payload and on /metrics."""

from __future__ import annotations

import dataclasses
import json

import jsonschema
from prometheus_client import generate_latest

from daemon.capture.state import CameraState, CaptureCounters
from daemon.monitor.metrics import DaemonMetrics
from daemon.monitor.stats import StatsCollector
from daemon.publish.camera_stats import CameraStats, LineCount, TrackingStats
from daemon.publish.payloads import stats_payload
from daemon.publish.schemas import load_schema

TRACKING = TrackingStats(
    active_tracks=3,
    tracks_total=17,
    events_total={"new": 17, "update": 9, "end": 14},
    line_crossings=(LineCount("gate", "A->B", "person", 5), LineCount("gate", "B->A", "car", 2)),
    zone_objects={"driveway": 1},
    snapshots_sent=30,
    snapshots_dropped=4,
)


def _stats() -> dict[str, CameraStats]:
    collector = StatsCollector()
    collector.add_camera("cam1", now=0.0)
    snap = collector.snapshot(
        2.0, {"cam1": CaptureCounters(frames_read=30)}, {"cam1": CameraState.STREAMING}
    )
    return {cid: dataclasses.replace(s, tracking=TRACKING) for cid, s in snap.items()}


def test_tracking_counts_in_the_stats_payload() -> None:
    payload = json.loads(stats_payload(_stats()["cam1"], epoch=1))
    jsonschema.Draft202012Validator(load_schema("stats")).validate(payload)
    assert payload["tracking"] == {
        "active_tracks": 3,
        "tracks_total": 17,
        "events_total": {"new": 17, "update": 9, "end": 14},
        "line_crossings": [
            {"line": "gate", "direction": "A->B", "name": "person", "total": 5},
            {"line": "gate", "direction": "B->A", "name": "car", "total": 2},
        ],
        "zones": {"driveway": 1},
        "snapshots": {"sent": 30, "dropped": 4},
    }


def test_tracking_counters_on_metrics() -> None:
    metrics = DaemonMetrics()
    metrics.update_cameras(_stats())
    body = generate_latest(metrics.registry).decode()
    assert 'edgewatch_tracks_active{camera="cam1"} 3.0' in body
    assert 'edgewatch_track_events_total{camera="cam1",type="update"} 9.0' in body
    crossing = 'camera="cam1",class="person",direction="A->B",line="gate"'
    assert f"edgewatch_line_crossings_total{{{crossing}}} 5.0" in body
    assert 'edgewatch_zone_objects{camera="cam1",zone="driveway"} 1.0' in body
