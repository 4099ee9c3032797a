"""Object events from one camera's tracks: ``new`` once, rate-limited ``update``, ``end`` once.

A confirmed track becomes reportable after ``min_hits`` frames with a matched detection:
then ``new``. From there, changes accumulate (a zone entered or left, a line crossed, a
loitering threshold passed, the best score up by ``update_score_margin``, the box moved by
``update_move_fraction`` of its size) and are published as one ``update`` at most every
``update_interval_s``. ``end`` follows when the tracker gives up on the track, or when the
camera stops, and carries the final state, so a change still waiting for its interval is
never lost. Tracks that never reached ``min_hits`` produce nothing.

Event ids are ``<session>-<track>-<n>``: ``session`` is random per tracker start, so ids
stay unique across restarts and reloads while redelivered copies keep their id.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

import numpy as np
import numpy.typing as npt

from daemon.config.tracking import LineConfig, TrackingConfig, ZoneConfig
from daemon.postprocess.classes import resolve_classes
from daemon.postprocess.yolo import Detections
from daemon.track.bytetrack import TrackFrame
from daemon.track.zones import FrameZones, ZoneLayout, sides_changed

F64 = npt.NDArray[np.float64]
Anchor = tuple[float, float]


class EventType(str, Enum):
    NEW = "new"
    UPDATE = "update"
    END = "end"


class Change(str, Enum):
    """Why an ``update`` was sent."""

    ZONE_ENTERED = "zone_entered"
    ZONE_LEFT = "zone_left"
    LINE_CROSSED = "line_crossed"
    LOITERING = "loitering"
    SCORE = "score"
    MOVED = "moved"


# ``EventType.value`` is a descriptor lookup: too slow for every event.
_KIND_NAMES: Final = {kind: kind.value for kind in EventType}

END_LOST: Final = "lost"
END_STOPPED: Final = "stopped"


@dataclass(frozen=True, slots=True)
class Crossing:
    line: str
    direction: str
    class_id: int
    ts: float


@dataclass(frozen=True, slots=True)
class TrackEvent:
    """One event, ready to serialise (``daemon.publish.payloads``)."""

    type: EventType
    event_id: str
    camera: str
    track_id: int
    class_id: int
    first_seen_ts: float
    last_seen_ts: float
    best_score: float
    score: float
    box: tuple[float, float, float, float]
    frame_size: tuple[int, int]
    # Zones the object is in now, each with the time it has spent there.
    zones: tuple[tuple[str, float], ...]
    crossings: tuple[Crossing, ...]
    changes: tuple[Change, ...] = ()
    end_reason: str | None = None


@dataclass(slots=True)
class _Track:
    track_id: int
    first_ts: float
    last_ts: float
    box: tuple[float, float, float, float]
    score: float
    class_id: int
    best_score: float
    frame_size: tuple[int, int]
    hits: int = 1
    reported: bool = False
    sent: int = 0
    last_sent_ts: float = 0.0
    sent_score: float = 0.0
    sent_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    anchor: tuple[float, float] = (0.0, 0.0)
    zones: dict[str, float] = field(default_factory=dict)  # name -> entered at
    loitered: set[str] = field(default_factory=set)
    crossings: list[Crossing] = field(default_factory=list)
    pending: set[Change] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class EventCounts:
    """Running totals of one camera, for the stats topic and the Prometheus counters."""

    active_tracks: int
    tracks_total: int
    events_total: dict[str, int]
    # (line, direction, class id) -> crossings since start
    crossings_total: dict[tuple[str, str, int], int]
    # zone -> reported objects in it now
    zone_occupancy: dict[str, int]


def _moved(a: tuple[float, ...], b: tuple[float, ...], fraction: float) -> bool:
    size = max(b[2] - b[0], b[3] - b[1], 1e-9)
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    return bool((dx * dx + dy * dy) ** 0.5 >= fraction * size)


class CameraEvents:
    """Turns one camera's per-frame tracker output into events (one thread at a time)."""

    def __init__(
        self,
        camera_id: str,
        config: TrackingConfig,
        zones: tuple[ZoneConfig, ...],
        lines: tuple[LineConfig, ...],
        names: tuple[str, ...],
    ) -> None:
        self._camera = camera_id
        self._cfg = config
        self._session = secrets.token_hex(4)
        self._layout = ZoneLayout(zones, lines)
        where = f"cameras[{camera_id}]"
        self._zone_classes = {
            z.name: resolve_classes(z.classes, names, f"{where}.zones[{z.name}].classes")
            for z in zones
        }
        self._line_classes = {
            ln.name: resolve_classes(ln.classes, names, f"{where}.lines[{ln.name}].classes")
            for ln in lines
        }
        self._tracks: dict[int, _Track] = {}
        self._tracks_total = 0
        self._events_total: Counter[str] = Counter()
        self._crossings_total: Counter[tuple[str, str, int]] = Counter()
        # Tracks whose best score rose in the last observed frame: (id, box, score).
        self.improved: list[tuple[int, tuple[float, float, float, float], float]] = []

    def observe(
        self, ts: float, frame_size: tuple[int, int], detections: Detections, tracked: TrackFrame
    ) -> list[TrackEvent]:
        """Fold one frame (detections and the tracker's answer for them) into events."""
        self.improved = []
        matched = np.flatnonzero(tracked.track_ids >= 0)
        tracks = self._see(ts, frame_size, detections, matched, tracked) if len(matched) else []
        if self._layout and tracks:
            self._place(ts, frame_size, tracks, detections, matched)
        events = self._due(ts, tracks)
        for track_id in tracked.ended.tolist():
            gone = self._tracks.pop(track_id, None)
            if gone is not None and gone.reported:
                events.append(self._emit(gone, EventType.END, END_LOST))
        return events

    def close(self) -> list[TrackEvent]:
        """``end`` for every reported track: the camera is stopping."""
        events = [
            self._emit(t, EventType.END, END_STOPPED) for t in self._tracks.values() if t.reported
        ]
        self._tracks.clear()
        return events

    def counts(self) -> EventCounts:
        """Totals so far and what is in view now."""
        reported = [t for t in self._tracks.values() if t.reported]
        occupancy = Counter(name for t in reported for name in t.zones)
        return EventCounts(
            active_tracks=len(reported),
            tracks_total=self._tracks_total,
            events_total=dict(self._events_total),
            crossings_total=dict(self._crossings_total),
            zone_occupancy={name: occupancy[name] for name in self._zone_classes},
        )

    # -- per frame ------------------------------------------------------------------------
    # One loop over the frame's tracks per step, with the track's fields read and written
    # in place: at tens of tracks a frame, per-track calls and array round trips would cost
    # more than the work itself.

    def _see(
        self,
        ts: float,
        frame_size: tuple[int, int],
        detections: Detections,
        matched: npt.NDArray[np.intp],
        tracked: TrackFrame,
    ) -> list[_Track]:
        """The tracks of the ``matched`` detections, brought up to this frame."""
        known = self._tracks
        improved = self.improved
        tracks = []
        for track_id, (x1, y1, x2, y2), score, cls in zip(
            tracked.track_ids[matched].tolist(),
            detections.boxes[matched].tolist(),
            detections.scores[matched].tolist(),
            detections.class_ids[matched].tolist(),
            strict=True,
        ):
            box = (x1, y1, x2, y2)
            track = known.get(track_id)
            if track is None:
                track = known[track_id] = _Track(
                    track_id, ts, ts, box, score, cls, score, frame_size, anchor=_anchor(box)
                )
                improved.append((track_id, box, score))
            else:
                track.hits += 1
                track.last_ts = ts
                track.box = box
                track.score = score
                track.frame_size = frame_size
                if score > track.best_score:
                    track.best_score = score
                    track.class_id = cls
                    improved.append((track_id, box, score))
            tracks.append(track)
        return tracks

    def _place(
        self,
        ts: float,
        frame_size: tuple[int, int],
        tracks: list[_Track],
        detections: Detections,
        matched: npt.NDArray[np.intp],
    ) -> None:
        """Zone membership and line crossings of the tracks of the ``matched`` detections."""
        layout = self._layout.at(*frame_size)
        if layout.zones:
            boxes = detections.boxes[matched].astype(np.float64)
            scores = detections.scores[matched].astype(np.float64)
            classes: npt.NDArray[np.int64] | None = None  # only for zones limited to classes
            for zone, polygon in layout.zones:
                allowed = self._zone_classes[zone.name]
                inside = layout.zone_mask(zone, polygon, boxes, scores)
                if allowed is not None:
                    if classes is None:
                        classes = np.asarray([t.class_id for t in tracks], dtype=np.int64)
                    inside &= np.isin(classes, allowed)
                for track, now_in in zip(tracks, inside.tolist(), strict=True):
                    self._zone_step(track, zone, now_in, ts)
        if layout.lines:
            before = [t.anchor for t in tracks]
            after = [((x1 + x2) / 2, y2) for x1, _, x2, y2 in (t.box for t in tracks)]
            for line, points in layout.lines:
                # Only a track that changed sides can have crossed: the rest is not tested.
                turned = sides_changed(points, before, after)
                if turned:
                    moved = [(tracks[i], before[i], after[i]) for i in turned]
                    self._cross(ts, layout, moved, line=line, points=points)
            for track, anchor in zip(tracks, after, strict=True):
                track.anchor = anchor

    def _cross(
        self,
        ts: float,
        layout: FrameZones,
        moved: list[tuple[_Track, Anchor, Anchor]],
        *,
        line: LineConfig,
        points: F64,
    ) -> None:
        """Crossings of ``line`` (``points`` in pixels) by the tracks ``moved`` (each with
        its anchor before and after this frame)."""
        before = np.asarray([b for _, b, _ in moved], dtype=np.float64)
        after = np.asarray([a for _, _, a in moved], dtype=np.float64)
        allowed = self._line_classes[line.name]
        for index, direction in layout.crossings(points, before, after):
            track = moved[index][0]
            if allowed is not None and track.class_id not in allowed:
                continue
            if any(c.line == line.name and c.direction == direction for c in track.crossings):
                continue  # once per track and direction
            crossing = Crossing(line.name, direction, track.class_id, ts)
            track.crossings.append(crossing)
            track.pending.add(Change.LINE_CROSSED)
            if track.reported:  # the others are counted with their ``new``
                self._count(crossing)

    @staticmethod
    def _zone_step(track: _Track, zone: ZoneConfig, now_in: bool, ts: float) -> None:
        was_in = zone.name in track.zones
        if now_in and not was_in:
            track.zones[zone.name] = ts
            track.pending.add(Change.ZONE_ENTERED)
        elif was_in and not now_in:
            del track.zones[zone.name]
            track.pending.add(Change.ZONE_LEFT)
        elif (
            now_in
            and zone.loiter_s is not None
            and zone.name not in track.loitered
            and ts - track.zones[zone.name] >= zone.loiter_s
        ):
            track.loitered.add(zone.name)
            track.pending.add(Change.LOITERING)

    def _due(self, ts: float, tracks: list[_Track]) -> list[TrackEvent]:
        """``new`` for the tracks that reach ``min_hits``; ``update`` for the reported ones
        past their interval with a change."""
        cfg = self._cfg
        min_hits, interval = cfg.min_hits, cfg.update_interval_s
        events = []
        for track in tracks:
            if not track.reported:
                if track.hits < min_hits:
                    continue
                track.reported = True
                track.pending.clear()
                self._tracks_total += 1
                for crossing in track.crossings:
                    self._count(crossing)
                events.append(self._emit(track, EventType.NEW))
                continue
            if ts - track.last_sent_ts < interval:
                continue  # score and motion are compared with the last event, so they can wait
            if track.best_score >= track.sent_score + cfg.update_score_margin:
                track.pending.add(Change.SCORE)
            if _moved(track.box, track.sent_box, cfg.update_move_fraction):
                track.pending.add(Change.MOVED)
            if track.pending:
                events.append(self._emit(track, EventType.UPDATE))
        return events

    def _count(self, crossing: Crossing) -> None:
        self._crossings_total[(crossing.line, crossing.direction, crossing.class_id)] += 1

    def _emit(self, track: _Track, kind: EventType, end_reason: str | None = None) -> TrackEvent:
        track.sent += 1
        zones, last_ts = track.zones, track.last_ts
        event = TrackEvent(
            type=kind,
            event_id=f"{self._session}-{track.track_id}-{track.sent}",
            camera=self._camera,
            track_id=track.track_id,
            class_id=track.class_id,
            first_seen_ts=track.first_ts,
            last_seen_ts=track.last_ts,
            best_score=track.best_score,
            score=track.score,
            box=track.box,
            frame_size=track.frame_size,
            zones=tuple((name, last_ts - since) for name, since in zones.items()) if zones else (),
            crossings=tuple(track.crossings),
            # A str enum sorts by value.
            changes=tuple(sorted(track.pending)) if track.pending else (),
            end_reason=end_reason,
        )
        track.pending.clear()
        track.last_sent_ts = track.last_ts
        track.sent_score = track.best_score
        track.sent_box = track.box
        self._events_total[_KIND_NAMES[kind]] += 1
        return event


def _anchor(box: tuple[float, float, float, float]) -> Anchor:
    """A box's bottom-centre point, as ``daemon.track.zones.anchors`` computes it."""
    return ((box[0] + box[2]) / 2, box[3])
