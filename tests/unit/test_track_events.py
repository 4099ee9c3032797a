"""Object events from the tracking stage: new/update/end, zones, lines, payload schema."""

from __future__ import annotations

import json
from collections.abc import Iterable

import jsonschema
import numpy as np

from daemon.config.model import CameraConfig
from daemon.config.secrets import Secret
from daemon.config.tracking import Coordinates, LineConfig, TrackingConfig, ZoneConfig
from daemon.postprocess.yolo import Detections
from daemon.publish.payloads import event_payload
from daemon.publish.schemas import load_schema
from daemon.track.events import Change, EventType, TrackEvent
from daemon.track.stage import CameraTracking
from daemon.track.zones import side_of, sides_changed

NAMES = ("person", "bicycle", "car")
# One detected object: centre x, bottom y, score, class id.
Obj = tuple[float, float, float, int]
FPS = 30.0
FRAME = (640, 480)
CONFIG = TrackingConfig(enabled=True, min_hits=3, lost_after_s=1.0, update_interval_s=0.5)


def _stage(
    zones: tuple[ZoneConfig, ...] = (),
    lines: tuple[LineConfig, ...] = (),
    config: TrackingConfig = CONFIG,
) -> CameraTracking:
    camera = CameraConfig(id="cam", url=Secret("cam.mp4"), zones=zones, lines=lines)
    return CameraTracking(camera, config, NAMES)


def _dets(objects: Iterable[Obj]) -> Detections:
    """(centre x, bottom y, score, class) per object; boxes 40 x 80."""
    rows = [(x - 20, y - 80, x + 20, y, s, c) for x, y, s, c in objects]
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return Detections(
        arr[:, :4].astype(np.float32), arr[:, 4].astype(np.float32), arr[:, 5].astype(np.int64)
    )


def _run(stage: CameraTracking, frames: list[list[Obj]]) -> list[TrackEvent]:
    events: list[TrackEvent] = []
    for i, objects in enumerate(frames):
        events += stage.process(100.0 + i / FPS, FRAME, _dets(objects))
    return events


def _walk(x0: float, dx: float, y: float, n: int) -> list[Obj]:
    """A person walking ``dx`` px a frame for ``n`` frames, detected at score 0.9."""
    return [(x0 + dx * i, y, 0.9, 0) for i in range(n)]


def test_one_new_and_one_end_per_track_and_updates_are_rate_limited() -> None:
    frames = [[p] for p in _walk(100, 6, 300, 90)] + [[] for _ in range(40)]
    events = _run(_stage(), frames)
    kinds = [e.type for e in events]
    assert kinds[0] is EventType.NEW
    assert kinds[-1] is EventType.END
    assert kinds.count(EventType.NEW) == 1
    assert kinds.count(EventType.END) == 1
    assert events[-1].end_reason == "lost"
    assert len({e.event_id for e in events}) == len(events)
    assert len({e.track_id for e in events}) == 1
    updates = [e for e in events if e.type is EventType.UPDATE]
    # It moves 180 px/s: a "moved" update at most every 0.5 s, not one per frame.
    assert 2 <= len(updates) <= 6
    assert all(Change.MOVED in e.changes for e in updates)
    gaps = np.diff([e.last_seen_ts for e in updates])
    assert (gaps >= 0.5 - 1e-9).all()
    assert events[-1].last_seen_ts == 100.0 + 89 / FPS


def test_short_lived_boxes_make_no_events_and_a_standing_object_makes_no_updates() -> None:
    standing: list[Obj] = [(100.0, 300.0, 0.9, 0)]
    assert _run(_stage(), [standing] * 2 + [[]] * 40) == []
    events = _run(_stage(), [standing] * 60)
    assert [e.type for e in events] == [EventType.NEW]
    closing = _stage()
    _run(closing, [standing] * 10)
    (end,) = closing.close()
    assert end.type is EventType.END
    assert end.end_reason == "stopped"


def test_line_crossings_once_per_direction_and_class() -> None:
    """A vertical line at x=320 from top to bottom: side A is the right (x > 320)."""
    line = LineConfig("gate", ((320.0, 0.0), (320.0, 480.0)))
    cars = LineConfig("cars_only", ((0.5, 0.0), (0.5, 1.0)), Coordinates.NORMALIZED, ("car",))
    stage = _stage(lines=(line, cars))
    right_to_left = _walk(400, -8, 300, 20)  # crosses A -> B
    back = _walk(248, 8, 300, 20)  # crosses B -> A
    again = _walk(408, -8, 300, 20)  # A -> B a second time: not counted again
    events = _run(stage, [[p] for p in right_to_left + back + again])
    final = events[-1]
    crossings = [(c.line, c.direction) for c in final.crossings]
    assert crossings == [("gate", "A->B"), ("gate", "B->A")]
    assert stage.counts().crossings_total == {("gate", "A->B", 0): 1, ("gate", "B->A", 0): 1}
    assert any(Change.LINE_CROSSED in e.changes for e in events)


def test_zone_enter_leave_loitering_and_filters() -> None:
    zone = ZoneConfig(
        "lot", ((200.0, 200.0), (440.0, 200.0), (440.0, 400.0), (200.0, 400.0)), loiter_s=1.0
    )
    strict = ZoneConfig("strict", zone.points, min_score=0.95)
    bikes = ZoneConfig("bikes", zone.points, classes=("bicycle",))
    stage = _stage(zones=(zone, strict, bikes))
    path = _walk(100, 5, 300, 30) + [(250.0, 300.0, 0.9, 0)] * 45 + _walk(250, -6, 300, 30)
    events = _run(stage, [[p] for p in path])
    changes = [c for e in events for c in e.changes]
    assert Change.ZONE_ENTERED in changes
    assert Change.LOITERING in changes
    assert Change.ZONE_LEFT in changes
    in_zone = [e for e in events if e.zones]
    assert in_zone
    assert {name for e in in_zone for name, _ in e.zones} == {"lot"}
    loiter = next(e for e in events if Change.LOITERING in e.changes)
    assert dict(loiter.zones)["lot"] >= 1.0
    assert events[-1].zones == ()


def test_out_of_order_frames_are_skipped() -> None:
    stage = _stage()
    stage.process(10.0, FRAME, _dets([(100, 300, 0.9, 0)]))
    assert stage.process(9.9, FRAME, _dets([(100, 300, 0.9, 0)])) == []
    assert stage.skipped == 1


def test_event_payloads_validate_against_the_schema() -> None:
    line = LineConfig("gate", ((320.0, 0.0), (320.0, 480.0)))
    zone = ZoneConfig(
        "left", ((0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)), Coordinates.NORMALIZED
    )
    stage = _stage(zones=(zone,), lines=(line,))
    events = _run(stage, [[p] for p in _walk(400, -8, 300, 40)] + [[] for _ in range(40)])
    validator = jsonschema.Draft202012Validator(load_schema("events"))
    kinds = set()
    for event in events:
        payload = json.loads(event_payload(event, NAMES, 200.0))
        validator.validate(payload)
        kinds.add(payload["type"])
    assert kinds == {"new", "update", "end"}


def test_sides_changed_decides_sides_as_side_of_does() -> None:
    """The per-frame test of which objects changed sides of a line agrees with the array
    one, for points exactly on the line (side A) too."""
    rng = np.random.default_rng(0)
    line = np.array([[100.0, 50.0], [500.0, 350.0]])
    on_line = [(100.0 + 4 * k, 50.0 + 3 * k) for k in range(0, 100, 2)]
    points = rng.uniform(0.0, 600.0, size=(200, 2)).tolist() + on_line
    before = [(x, y) for x, y in rng.permutation(np.array(points)).tolist()]
    after = [(x, y) for x, y in rng.permutation(np.array(points)).tolist()]
    sides = [side_of(np.array(p), line[0], line[1]) for p in (before, after)]
    assert (side_of(np.array(on_line), line[0], line[1]) == -1.0).all()
    expected = (sides[0] != sides[1]).nonzero()[0].tolist()
    assert sides_changed(line, before, after) == expected
    assert any(p in on_line for i in expected for p in (before[i], after[i]))
