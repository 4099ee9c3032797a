"""Zone membership and line crossings of tracked objects, vectorised over objects.

An object's position is its box's bottom-centre point (where it stands on the ground), the
usual choice for people and vehicles seen from above the scene. A line has two sides: walking
along it from its first point to its second, side A is on your left and side B on your
right, as the image shows them; moving from A to B is an ``A->B`` crossing. Normalised
points are scaled to each frame's size when the frame arrives, so a camera that changes
resolution keeps its zones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from daemon.config.tracking import Coordinates, LineConfig, ZoneConfig

F64 = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

A_TO_B: Final = "A->B"
B_TO_A: Final = "B->A"


def anchors(boxes: F64) -> F64:
    """Bottom-centre points of ``[x1, y1, x2, y2]`` rows."""
    # Written in place: np.stack costs more than the arithmetic at tens of objects.
    out = np.empty((len(boxes), 2))
    np.add(boxes[:, 0], boxes[:, 2], out=out[:, 0])
    out[:, 0] /= 2
    out[:, 1] = boxes[:, 3]
    return out


def _scaled(
    points: tuple[tuple[float, float], ...], units: Coordinates, size: tuple[int, int]
) -> F64:
    arr = np.asarray(points, dtype=np.float64)
    return arr * np.asarray(size, dtype=np.float64) if units is Coordinates.NORMALIZED else arr


def inside_polygon(points: F64, polygon: F64) -> BoolArray:
    """Even-odd rule for each of ``points`` (N x 2) against ``polygon`` (K x 2 vertices)."""
    x, y = points[:, :1], points[:, 1:]
    x1, y1 = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_x = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    hits = straddles & (x < cross_x)
    inside: BoolArray = (hits.sum(axis=1) % 2) == 1
    return inside


def side_of(points: F64, a: F64, b: F64) -> F64:
    """Side of each point relative to the directed line a -> b: -1 for A, +1 for B.

    A point exactly on the line counts as side A, so an object stepping onto the line and
    on across it crosses once, not never."""
    d = b - a
    cross = d[0] * (points[:, 1] - a[1]) - d[1] * (points[:, 0] - a[0])
    result: F64 = np.where(cross > 0, 1.0, -1.0)
    return result


def sides_changed(
    line: F64, before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> list[int]:
    """The indices of the points that moved ``before`` -> ``after`` to the other side of
    the directed ``line`` (2 x 2), as ``side_of`` decides sides.

    In Python: for a few tens of points it costs less than the arrays would, and the same
    arithmetic in the same order gives the same sides."""
    (ax, ay), (bx, by) = line.tolist()
    dx, dy = bx - ax, by - ay
    return [
        i
        for i, ((x0, y0), (x1, y1)) in enumerate(zip(before, after, strict=True))
        if (dx * (y0 - ay) - dy * (x0 - ax) > 0) != (dx * (y1 - ay) - dy * (x1 - ax) > 0)
    ]


@dataclass(frozen=True, slots=True)
class FrameZones:
    """Zones and lines of one camera in one frame size's pixels."""

    zones: tuple[tuple[ZoneConfig, F64], ...]
    lines: tuple[tuple[LineConfig, F64], ...]
    frame_area: float

    def zone_mask(self, zone: ZoneConfig, polygon: F64, boxes: F64, scores: F64) -> BoolArray:
        """Objects inside ``zone`` that pass its score and size limits (class is the caller's)."""
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        min_area = zone.min_area * (
            self.frame_area if zone.coordinates is Coordinates.NORMALIZED else 1.0
        )
        ok: BoolArray = (scores >= zone.min_score) & (area >= min_area)
        return ok & inside_polygon(anchors(boxes), polygon)

    def crossings(self, line: F64, before: F64, after: F64) -> list[tuple[int, str]]:
        """The objects moving ``before`` -> ``after`` (N x 2 each) that crossed the line
        segment: (index, direction) for each, by index."""
        a, b = line[0], line[1]
        sides = side_of(np.concatenate([before, after]), a, b)  # one call for both
        s0, s1 = sides[: len(before)], sides[len(before) :]
        # Most frames nobody changes side: the segment test only for those who did.
        changed = (s0 * s1 < 0).nonzero()[0]
        if not len(changed):
            return []
        start = before[changed]
        moved = after[changed] - start
        # The line's end points must lie on opposite sides of the object's path, too.
        e0 = np.sign(moved[:, 0] * (a[1] - start[:, 1]) - moved[:, 1] * (a[0] - start[:, 0]))
        e1 = np.sign(moved[:, 0] * (b[1] - start[:, 1]) - moved[:, 1] * (b[0] - start[:, 0]))
        crossed = changed[e0 * e1 <= 0].tolist()
        return [
            (i, A_TO_B if side < 0 else B_TO_A)
            for i, side in zip(crossed, s0[crossed].tolist(), strict=True)
        ]


class ZoneLayout:
    """A camera's zones and lines, scaled once per frame size."""

    def __init__(self, zones: tuple[ZoneConfig, ...], lines: tuple[LineConfig, ...]) -> None:
        self._zones = zones
        self._lines = lines
        self._cache: dict[tuple[int, int], FrameZones] = {}

    def __bool__(self) -> bool:
        return bool(self._zones or self._lines)

    def at(self, width: int, height: int) -> FrameZones:
        """The layout in pixels of a ``width`` x ``height`` frame."""
        size = (width, height)
        found = self._cache.get(size)
        if found is None:
            found = FrameZones(
                tuple((z, _scaled(z.points, z.coordinates, size)) for z in self._zones),
                tuple((ln, _scaled(ln.points, ln.coordinates, size)) for ln in self._lines),
                float(width * height),
            )
            # Frame sizes change rarely; keep only the current one.
            self._cache = {size: found}
        return found
