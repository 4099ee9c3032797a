"""Typed configuration of object tracking, events, zones, lines and snapshots.

``tracking:`` at the top level sets every camera's defaults; a camera's own ``tracking:``
replaces them for that camera (the whole block: unset keys take the embedded defaults below,
not the top-level ones). Zones and lines belong to one camera's view, so they are only in
the camera's ``zones:`` / ``lines:``. ``RULES`` and ``tracking_problems`` are the value
and cross-field checks that ``daemon.config.rules`` applies like its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final

Point = tuple[float, float]


class Coordinates(str, Enum):
    """Units of zone and line points: frame pixels, or fractions (0..1) of width and height."""

    PIXEL = "pixel"
    NORMALIZED = "normalized"


@dataclass(frozen=True)
class ZoneConfig:
    """A polygon; an object is in it while its box's bottom-centre point is inside."""

    name: str
    points: tuple[Point, ...]
    coordinates: Coordinates = Coordinates.PIXEL
    # Class names or ids that count in this zone; None means every tracked class.
    classes: tuple[str | int, ...] | None = None
    min_score: float = 0.0
    # Smallest box area that counts, in the zone's units squared (pixels², or a fraction of
    # the frame's area when normalized).
    min_area: float = 0.0
    # An object that stays this long raises one ``loitering`` event; None: never.
    loiter_s: float | None = None


@dataclass(frozen=True)
class LineConfig:
    """A counting line from point A to point B; crossings are counted per direction."""

    name: str
    points: tuple[Point, Point]
    coordinates: Coordinates = Coordinates.PIXEL
    classes: tuple[str | int, ...] | None = None


@dataclass(frozen=True)
class SnapshotConfig:
    """JPEG crops of each event's best frame, encoded off the detection path."""

    enabled: bool = False
    publish: bool = True
    # Also write ``<event id>.jpg`` here, deleting the oldest beyond ``directory_max_mb``.
    directory: Path | None = None
    directory_max_mb: int = 64
    max_side: int = 320
    quality: int = 80
    # Per camera; snapshots beyond the rate, or while the encoder is busy, are dropped.
    max_per_s: float = 2.0


@dataclass(frozen=True)
class TrackingConfig:
    """ByteTrack and the events built on it (defaults: Ultralytics' ``bytetrack.yaml``)."""

    enabled: bool = False
    # Class names or ids to track; None means every class the camera publishes.
    classes: tuple[str | int, ...] | None = None
    high_threshold: float = 0.25
    low_threshold: float = 0.1
    new_track_threshold: float = 0.25
    match_threshold: float = 0.8
    # Matched detections before a track is reported (its ``new`` event).
    min_hits: int = 3
    # A track unseen for longer than this ends.
    lost_after_s: float = 1.0
    # Per-frame ``detections`` messages next to the events.
    publish_detections: bool = True
    # ``update`` events: at most one per track per interval, and only for a change: a zone
    # entered or left, a line crossed, the best score up by ``update_score_margin``, or the
    # box centre moved by ``update_move_fraction`` of the box's larger side.
    update_interval_s: float = 1.0
    update_score_margin: float = 0.05
    update_move_fraction: float = 0.5
    snapshots: SnapshotConfig = field(default_factory=SnapshotConfig)


# The phrase completing "expected ..." and the test of a typed value (``rules.Rule``'s fields).
_Rule = tuple[str, Callable[[Any], bool]]


def _fraction(v: float) -> bool:
    return 0 < v <= 1


def _non_negative(v: float) -> bool:
    return math.isfinite(v) and v >= 0


def _positive(v: float) -> bool:
    return math.isfinite(v) and v > 0


def _name_ok(v: str) -> bool:
    return bool(v.strip()) and not any(ch in v for ch in "/+#\x00")


def _finite_points(points: tuple[Point, ...]) -> bool:
    return all(math.isfinite(x) and math.isfinite(y) for x, y in points)


def _polygon_ok(points: tuple[Point, ...]) -> bool:
    return len(points) >= 3 and _finite_points(points)


def _line_ok(points: tuple[Point, Point]) -> bool:
    return _finite_points(points) and points[0] != points[1]


def _classes_ok(classes: tuple[str | int, ...]) -> bool:
    return bool(classes) and all(
        (isinstance(c, int) and c >= 0) or (isinstance(c, str) and c.strip()) for c in classes
    )


_FRACTION: Final = ("a number in (0, 1]", _fraction)
_CLASSES: Final = ("a non-empty list of class names or class ids (>= 0)", _classes_ok)
_NAME: Final = ("a non-empty name without '/', '+' or '#'", _name_ok)

RULES: Final[dict[tuple[type, str], _Rule]] = {
    (TrackingConfig, "classes"): _CLASSES,
    (TrackingConfig, "high_threshold"): _FRACTION,
    (TrackingConfig, "low_threshold"): _FRACTION,
    (TrackingConfig, "new_track_threshold"): _FRACTION,
    (TrackingConfig, "match_threshold"): _FRACTION,
    (TrackingConfig, "min_hits"): ("an integer in 1..1000", lambda v: 1 <= v <= 1000),
    (TrackingConfig, "lost_after_s"): ("a number of seconds in (0, 3600]", lambda v: 0 < v <= 3600),
    (TrackingConfig, "update_interval_s"): ("a number >= 0", _non_negative),
    (TrackingConfig, "update_score_margin"): _FRACTION,
    (TrackingConfig, "update_move_fraction"): ("a positive number", _positive),
    (SnapshotConfig, "directory_max_mb"): ("an integer in 1..100000", lambda v: 1 <= v <= 100_000),
    (SnapshotConfig, "max_side"): ("an integer in 16..4096", lambda v: 16 <= v <= 4096),
    (SnapshotConfig, "quality"): ("an integer in 1..100", lambda v: 1 <= v <= 100),
    (SnapshotConfig, "max_per_s"): ("a number in (0, 100]", lambda v: 0 < v <= 100),
    (ZoneConfig, "name"): _NAME,
    (ZoneConfig, "points"): ("a list of at least 3 [x, y] points", _polygon_ok),
    (ZoneConfig, "classes"): _CLASSES,
    (ZoneConfig, "min_score"): ("a number in [0, 1]", lambda v: 0 <= v <= 1),
    (ZoneConfig, "min_area"): ("a number >= 0", _non_negative),
    (ZoneConfig, "loiter_s"): ("a positive number of seconds", _positive),
    (LineConfig, "name"): _NAME,
    (LineConfig, "points"): ("two different [x, y] points [A, B]", _line_ok),
    (LineConfig, "classes"): _CLASSES,
}


def _normalized_problem(points: tuple[Point, ...]) -> list[tuple[str, str]]:
    if all(0 <= v <= 1 for p in points for v in p):
        return []
    return [("points", "normalized coordinates must be in 0..1")]


def tracking_problems(obj: object) -> list[tuple[str, str]]:
    """Cross-field problems of a built config object, as (field name, message) pairs.

    Besides the classes here, any object with ``zones`` and ``lines`` (a camera) is checked
    for a name used twice: names key the events and counters.
    """
    if isinstance(obj, TrackingConfig):
        if obj.low_threshold > obj.high_threshold:
            return [("low_threshold", f"must be <= high_threshold ({obj.high_threshold:g})")]
    elif isinstance(obj, ZoneConfig | LineConfig):
        if obj.coordinates is Coordinates.NORMALIZED:
            return _normalized_problem(obj.points)
    else:
        zones: tuple[ZoneConfig, ...] = getattr(obj, "zones", ())
        lines: tuple[LineConfig, ...] = getattr(obj, "lines", ())
        seen: set[str] = set()
        for key, name in [("zones", z.name) for z in zones] + [("lines", ln.name) for ln in lines]:
            if name in seen:
                return [(key, f"zone and line names must be unique: '{name}' is used twice")]
            seen.add(name)
    return []
