"""Object events through the whole daemon: real RTSP cameras, model and broker, with a broker
outage in the middle.

Proof of no loss: event ids are ``<session>-<track>-<n>`` with ``n`` counting a track's
events from 1, so a track received as ``new`` (n = 1), contiguous updates and ``end``
(the last n) lost none of its events; the daemon's last stats message per camera counts the
tracks it reported (``tracking.tracks_total``), so a track lost whole would show too. The
checker holds a persistent session that the broker (persistence on) keeps across its
restart, and the memory queue is small, so the outage's events go through the disk spool.
The second camera's own tracking block turns its per-frame detections off (events only).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from daemon.publish.schemas import load_schema
from tests.fixtures.broker import Subscriber
from tests.fixtures.observe import NODE, camera_of, cheap_cameras, payloads
from tests.harness.broker import Mosquitto, free_port
from tests.harness.daemon import DaemonProcess, daemon_config
from tests.harness.rtsp import RtspServer

pytestmark = [pytest.mark.rtsp, pytest.mark.mqtt]

PREFIX = "trackout"
OUTAGE_S = 8.0
# Small enough that the outage's backlog spills to the spool, and large enough for the
# biggest burst queued at once: a batch's detections and events, or the ``end`` of every
# track at stop. The pump thread spills (above half the queue) between bursts, so a burst
# larger than that headroom drops the oldest messages (counted) with the spool healthy.
MEMORY_MESSAGES = 64
TRACKING = {
    "enabled": True,
    "min_hits": 2,
    "lost_after_s": 1.0,
    "update_interval_s": 1.0,
    "snapshots": {"enabled": True, "max_side": 96, "max_per_s": 2},
}
# A counting line down the middle of every view, in normalised coordinates.
LINE = {"name": "middle", "points": [[0.5, 0.0], [0.5, 1.0]], "coordinates": "normalized"}


def _metric(daemon: DaemonProcess, name: str) -> float:
    value = daemon.metric(name)
    assert value is not None, f"{name} missing from /metrics"
    return value


def _check_tracks(events: list[dict[str, Any]]) -> dict[tuple[str, str, int], list[str]]:
    """Per track (camera, session, id): its event types in id order; asserts no gap."""
    by_track: dict[tuple[str, str, int], dict[int, str]] = defaultdict(dict)
    for e in events:
        session, track, n = e["event_id"].rsplit("-", 2)
        assert int(track) == e["track_id"]
        by_track[(e["camera"], session, e["track_id"])][int(n)] = e["type"]
    out = {}
    for key, numbered in by_track.items():
        assert sorted(numbered) == list(range(1, len(numbered) + 1)), (key, numbered)
        out[key] = [numbered[n] for n in sorted(numbered)]
    return out


def test_events_survive_a_broker_outage(
    tmp_path: Path,
    *,
    rtsp_server: RtspServer,
    videos: list[Path],
    run_daemon: Callable[..., DaemonProcess],
    model_onnx: Path,
) -> None:
    cameras = cheap_cameras(rtsp_server, videos, 2)
    events_only = cameras[1]
    broker = Mosquitto(persistence=True, workdir=tmp_path / "mosquitto")
    broker.start()
    checker = Subscriber(broker, (f"{PREFIX}/#",), client_id="track-checker", persistent=True)
    try:
        specs: dict[str, dict[str, Any]] = {
            c: {"url": rtsp_server.url(c), "lines": [LINE]} for c in cameras
        }
        # The second camera publishes events only: its own tracking block turns detections off.
        specs[events_only]["tracking"] = {**TRACKING, "publish_detections": False}
        document = daemon_config(
            specs,
            model_onnx,
            mqtt_port=broker.port,
            metrics_port=free_port(),
            prefix=PREFIX,
            mqtt={
                "queue": {
                    "max_memory_messages": MEMORY_MESSAGES,
                    "spool_dir": str(tmp_path / "spool"),
                }
            },
        )
        daemon = run_daemon({**document, "tracking": TRACKING})
        daemon.wait_streaming(cameras)

        def every_camera_reported(_: object) -> bool:
            news = {e["camera"] for e in payloads(checker, "events") if e["type"] == "new"}
            return set(cameras) <= news

        checker.wait_for(every_camera_reported, timeout=90)
        outage_started = time.time()
        broker.stop()
        daemon.wait_until(lambda: _metric(daemon, "edgewatch_mqtt_connected") == 0, 15, "down")
        time.sleep(OUTAGE_S)
        spooled = _metric(daemon, "edgewatch_mqtt_spooled_total")
        broker.start()
        outage_ended = time.time()
        daemon.wait_until(
            lambda: (
                _metric(daemon, "edgewatch_mqtt_connected") == 1
                and _metric(daemon, "edgewatch_mqtt_queue_depth") == 0
            ),
            60,
            "backlog delivered",
        )
        dropped = _metric(daemon, "edgewatch_mqtt_dropped_total")
        new_total = daemon.metric(
            "edgewatch_track_events_total", f'camera="{cameras[0]}",type="new"'
        )
        assert daemon.stop() == 0
        status = f"{PREFIX}/{NODE}/status"
        checker.wait_for(
            lambda _: any(m.payload == b"offline" for m in checker.messages(status)), timeout=15
        )
        time.sleep(1.0)
    finally:
        checker.close()
        broker.close()

    checker_messages = checker.messages()
    received = payloads(checker, "events")
    validator = jsonschema.Draft202012Validator(load_schema("events"))
    for event in received:
        validator.validate(event)
    stats_validator = jsonschema.Draft202012Validator(load_schema("stats"))
    stats = payloads(checker, "stats")
    for s in stats:
        stats_validator.validate(s)
    unique = {e["event_id"]: e for e in received}
    assert dropped == 0, "the memory queue dropped messages: no loss can be proven"
    tracks = _check_tracks(list(unique.values()))
    during = [e for e in unique.values() if outage_started <= e["publish_ts"] <= outage_ended]
    print(
        f"{len(received)} event messages ({len(unique)} distinct) for {len(tracks)} tracks; "
        f"{len(during)} built during the {OUTAGE_S:.0f} s outage; {spooled:.0f} spooled"
    )
    assert spooled > 0
    assert during, "no event was built while the broker was down"
    assert new_total is not None
    assert new_total > 0
    snapshots = payloads(checker, "snapshot")
    snapshot_validator = jsonschema.Draft202012Validator(load_schema("snapshot"))
    for snap in snapshots:
        snapshot_validator.validate(snap)
        assert snap["event_id"] in unique
    assert {s["camera"] for s in snapshots} == set(cameras)
    for types in tracks.values():
        assert types[0] == "new"
        assert types[-1] == "end"
        assert Counter(types) == Counter(new=1, end=1, update=len(types) - 2)
    for cid in cameras:
        mine = {k: v for k, v in tracks.items() if k[0] == cid}
        final = max((s for s in stats if s["camera"] == cid), key=lambda s: s["ts"])["tracking"]
        assert len(mine) == final["tracks_total"] > 0, (cid, final)
        # Each crossing is counted once, in the stats, and listed in the track's last event.
        crossed = Counter(
            (c["line"], c["direction"], c["name"])
            for e in unique.values()
            if e["camera"] == cid and e["type"] == "end"
            for c in e["crossings"]
        )
        counted = {
            (c["line"], c["direction"], c["name"]): c["total"] for c in final["line_crossings"]
        }
        assert dict(crossed) == counted, (cid, crossed, counted)
    detections = {camera_of(m) for m in checker_messages if m.topic.endswith("/detections")}
    assert detections == {cameras[0]}, "per-frame detections of the events-only camera"
    assert "Traceback" not in daemon.log_text()
