"""ByteTrack (Zhang et al., ECCV 2022) for a batch of cameras at once, on capture timestamps.

Per frame: predict every confirmed track (Kalman, ``daemon.track.kalman``), match them to
the high-score detections by IoU weighted by score, then match the tracks still unmatched
to the low-score detections by IoU alone (the "byte" step that keeps occluded objects),
then give last frame's unconfirmed tracks one chance with the remaining high-score boxes,
start tracks from what is left above ``new_track_threshold``, and end tracks unseen for
``lost_after_s``. The association order, thresholds and duplicate-removal rule follow
Ultralytics' ``BYTETracker`` so the same detections get the same tracks (checked by
``tests/unit/test_track_reference.py``); the differences are that time is the capture
timestamp rather than a frame count, and that ids are handed out on confirmation, so
boxes that never became a track burn no id.

Each camera's ``ByteTracker`` owns its tracks as columns (``_Tracks``): one row per
quantity, so the Kalman arithmetic runs on contiguous rows and a reordering or a selection
of tracks is one numpy call per array. ``update_batch`` advances one frame of several
cameras in one vectorised pass: their tracks and boxes are concatenated with a camera index
per column, and a track is only ever paired with boxes of its own camera (one camera's
boxes on a grid, several cameras' looked up by sorting; never an all-tracks x all-boxes
grid across cameras), so the work grows linearly with the cameras. The pairs and their IoU
are found once per frame for all three matching stages. A frame costs a fixed number of
numpy calls however many objects and cameras it holds, and that fixed cost (which
dominates at tracker sizes) is shared by the batch; only the solver for objects close
together runs once per camera that has some. A camera's result depends only on its own
frames, whatever shares its batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from daemon.config.tracking import TrackingConfig
from daemon.postprocess.iou import corner_iou
from daemon.track import kalman

F64 = npt.NDArray[np.float64]
FloatArray = npt.NDArray[np.floating[Any]]
I64 = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_EMPTY: Final = np.zeros(0, dtype=np.int64)
# The rows of a track's column in ``_Tracks.state``: its Kalman state (``daemon.track.kalman``:
# the mean, then the covariance's 3 x 4 entries) and the capture times it was started and
# last seen at.
_MEAN: Final = slice(0, 8)
_COV: Final = slice(8, 20)
_START: Final = 20
_SEEN: Final = 21
_STATE_ROWS: Final = 22
# Low-score boxes are matched on IoU alone with this limit; unconfirmed tracks with this one
# (ByteTrack's fixed second- and third-stage thresholds).
_SECOND_MATCH: Final = 0.5
_UNCONFIRMED_MATCH: Final = 0.7
# A tracked and a lost track overlapping this much (IoU distance below it) are one object.
_DUPLICATE_DISTANCE: Final = 0.15
# Capture timestamps are float seconds: a gap equal to the grace up to rounding is within it.
_TIME_EPS: Final = 1e-6
# Where each of a camera's numbers for a frame is (``ByteTracker._numbers``).
_TS, _ELAPSED, _HIGH, _LOW, _NEW, _MATCH, _LOST_AFTER = range(7)


@dataclass(frozen=True, slots=True)
class TrackFrame:
    """The tracker's answer for one camera's frame.

    ``track_ids[i]`` is the id of the confirmed track detection ``i`` belongs to, or -1.
    ``ended`` holds the ids of confirmed tracks that ended at this frame.
    """

    track_ids: I64
    ended: I64


@dataclass(frozen=True, slots=True)
class TrackInput:
    """One camera's frame in a batch: its tracker, capture time, boxes (xyxy) and scores."""

    tracker: ByteTracker
    ts: float
    boxes: FloatArray
    scores: FloatArray


@dataclass(slots=True)
class _Tracks:
    """Tracks as columns: ``state`` (``_STATE_ROWS`` x N), their ids (0 until confirmed)
    and whether each is lost."""

    state: F64
    ids: I64
    lost: BoolArray

    @classmethod
    def none(cls) -> _Tracks:
        """No tracks."""
        return cls(np.zeros((_STATE_ROWS, 0)), _EMPTY, np.zeros(0, dtype=bool))

    def take(self, index: I64) -> _Tracks:
        """The tracks at ``index``, in its order."""
        return _Tracks(_columns(self.state, index), self.ids[index], self.lost[index])

    def part(self, columns: slice) -> _Tracks:
        """The tracks in ``columns`` (views)."""
        return _Tracks(self.state[:, columns], self.ids[columns], self.lost[columns])

    @staticmethod
    def joined(parts: Sequence[_Tracks]) -> _Tracks:
        """Tracks end to end."""
        return _Tracks(
            np.concatenate([p.state for p in parts], axis=1),
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.lost for p in parts]),
        )


def _columns(rows: F64, index: I64) -> F64:
    """The columns ``index`` of ``rows``: ``take`` gathers them about twice as fast as
    ``rows[:, index]`` does at tracker sizes, into a contiguous array."""
    return rows.take(index, axis=1)


class ByteTracker:
    """Stable integer track ids for one camera's detections; ids start at 1."""

    def __init__(self, config: TrackingConfig) -> None:
        self.config = config
        self._next_id = 1
        self._last_ts: float | None = None
        self._tracks = _Tracks.none()

    def __len__(self) -> int:
        """Tracks alive (confirmed, unconfirmed and lost)."""
        return len(self._tracks.ids)

    def _numbers(self, ts: float) -> tuple[float, ...]:
        """A frame's numbers at ``ts`` in the order ``update_batch`` reads them (``_TS`` to
        ``_LOST_AFTER``): its time, the time since the last frame, the high, low and
        new-track score thresholds, the first-stage match threshold and how long a lost
        track lives."""
        c = self.config
        elapsed = 0.0 if self._last_ts is None else ts - self._last_ts
        return (
            ts, elapsed, c.high_threshold, c.low_threshold, c.new_track_threshold,
            c.match_threshold, c.lost_after_s + _TIME_EPS,
        )  # fmt: skip

    def update(self, ts: float, boxes: FloatArray, scores: FloatArray) -> TrackFrame:
        """Advance to capture time ``ts`` with this frame's ``boxes`` (xyxy) and ``scores``."""
        return update_batch([TrackInput(self, ts, boxes, scores)])[0]


def update_batch(frames: Sequence[TrackInput]) -> list[TrackFrame]:
    """Advance each camera's tracker to its frame; the answers in the order of ``frames``.

    A tracker appears at most once. Each camera gets exactly what its ``ByteTracker.update``
    alone would give it: no step mixes the tracks or boxes of two cameras."""
    if not frames:
        return []
    trackers = [f.tracker for f in frames]
    if len({id(t) for t in trackers}) != len(trackers):
        raise ValueError("a tracker appears twice in one batch")
    cameras = len(frames)
    # One array for the numbers of all cameras, a row each; gathered once for each box and
    # once for each track (a row per number), then read by row.
    rows = [f.tracker._numbers(f.ts) for f in frames]
    numbers = np.array(rows)
    dets = _Boxes(frames, numbers)
    state = _State(trackers)
    per_track = _columns(numbers.T, state.cam)
    confirmed = state.tracks.ids > 0
    unconfirmed = ~confirmed
    if len(confirmed):
        state.predict(per_track[_ELAPSED], confirmed)
    limits = [r[_MATCH] for r in rows]
    matching = _Matching(state.cam, kalman.xyah_to_xyxy(state.mean), dets, limits)
    free, newly_lost = matching.associate(confirmed, state.tracks.lost)
    det_of = matching.det_of
    matched = det_of >= 0
    state.correct(per_track[_TS], dets.measured, det_of, matched)
    lost = state.tracks.lost
    lost[newly_lost] = True
    next_id = np.array([t._next_id for t in trackers], dtype=np.int64)
    promoted = (unconfirmed & matched).nonzero()[0]
    if len(promoted):
        state.tracks.ids[promoted] = _hand_out(state.cam[promoted], next_id)
    unseen = per_track[_TS] - state.tracks.state[_SEEN]
    drop = lost & (unseen > per_track[_LOST_AFTER])
    drop |= unconfirmed & ~matched
    fresh = (free & (dets.scores >= dets.numbers[_NEW])).nonzero()[0]
    if len(fresh):
        # On a camera's first frame its tracks are confirmed at once.
        firsts = [t._last_ts is None for t in trackers]
        first = np.array(firsts) if any(firsts) else None
        det_of, drop = state.start(
            dets, fresh, first=first, next_id=next_id, det_of=det_of, drop=drop
        )
    state.mark_duplicates(drop, cameras)

    ids = state.tracks.ids
    has_id = ids > 0
    reported = has_id & ~drop & (det_of >= 0)
    track_ids = np.empty(len(dets.scores), dtype=np.int64)
    track_ids.fill(-1)
    track_ids[det_of[reported]] = ids[reported]
    gone = drop & has_id
    ended, by_ended = ids[gone], _Layout.of(state.cam[gone], cameras)
    if np.count_nonzero(drop):
        state.take((~drop).nonzero()[0])
    state.scatter(trackers, numbers[:, _TS].tolist(), next_id)
    by_box = dets.layout
    return [TrackFrame(track_ids[by_box.rows(c)], ended[by_ended.rows(c)]) for c in range(cameras)]


class _Boxes:
    """A batch's boxes (``corners``: x1, y1, x2, y2 rows, a column per box) and scores
    concatenated in batch order, classed by their camera's thresholds."""

    def __init__(self, frames: Sequence[TrackInput], numbers: F64) -> None:
        """``numbers``: each camera's numbers for the frame, a row each (``update_batch``)."""
        scores_of = [f.scores.reshape(-1) for f in frames]
        self.corners = np.concatenate(
            [f.boxes.reshape(-1, 4).T for f in frames], axis=1, dtype=np.float64
        )
        self.scores = np.concatenate(scores_of, dtype=np.float64)
        self.layout = _Layout.of_counts([len(s) for s in scores_of])
        # As the Kalman filter measures them, for the tracks they correct or start.
        self.measured = kalman.xyxy_to_xyah(self.corners)
        # Their camera's numbers, a row per number.
        self.numbers = _columns(numbers.T, self.layout.cam)
        high_threshold = self.numbers[_HIGH]
        # A box without area has no aspect ratio for the Kalman state.
        ends_after_start = self.corners[2:] > self.corners[:2]
        valid = ends_after_start[0] & ends_after_start[1]
        self.high = valid & (self.scores >= high_threshold)
        self.low = valid & (self.scores > self.numbers[_LOW]) & (self.scores < high_threshold)


class _Layout:
    """Columns sorted by camera (``cam``): where each camera's columns are."""

    def __init__(self, cam: I64, counts: list[int]) -> None:
        self.cam = cam
        self._bounds = [0, *itertools.accumulate(counts)]

    @classmethod
    def of(cls, cam: I64, cameras: int) -> _Layout:
        """The layout of columns whose cameras are ``cam``."""
        counts = [len(cam)] if cameras == 1 else np.bincount(cam, minlength=cameras).tolist()
        return cls(cam, counts)

    @classmethod
    def of_counts(cls, counts: list[int]) -> _Layout:
        """The layout of ``counts[c]`` columns of each camera ``c`` in turn."""
        if len(counts) == 1:
            return cls(np.zeros(counts[0], dtype=np.int64), counts)
        return cls(np.arange(len(counts)).repeat(counts), counts)

    def rows(self, camera: int) -> slice:
        """Where camera ``camera``'s columns are."""
        return slice(self._bounds[camera], self._bounds[camera + 1])


def _hand_out(cam: I64, next_id: I64) -> I64:
    """New ids for tracks sorted by camera, each camera counting on from its ``next_id``
    (advanced past them)."""
    if len(next_id) == 1:  # one camera: its ids in a row
        ids = np.arange(next_id[0], next_id[0] + len(cam))
        next_id += len(cam)
        return ids
    counts = np.bincount(cam, minlength=len(next_id))
    rank = np.arange(len(cam)) - (np.cumsum(counts) - counts)[cam]
    ids = next_id[cam] + rank
    next_id += counts
    return ids


class _State:
    """The tracks of a batch's cameras, concatenated in batch order; ``cam`` per track."""

    def __init__(self, trackers: list[ByteTracker]) -> None:
        if len(trackers) == 1:  # its tracks as they are: changed in place, then handed back
            self.tracks = trackers[0]._tracks
            self.cam = np.zeros(len(self.tracks.ids), dtype=np.int64)
        else:
            self.tracks = _Tracks.joined([t._tracks for t in trackers])
            self.cam = np.arange(len(trackers)).repeat([len(t) for t in trackers])

    # Views of the state's rows: written in place, they change the tracks.
    @property
    def mean(self) -> F64:
        return self.tracks.state[_MEAN]

    @property
    def cov(self) -> F64:
        return self.tracks.state[_COV].reshape(3, 4, -1)

    def predict(self, elapsed: F64, confirmed: BoolArray) -> None:
        """Move the ``confirmed`` tracks on by their camera's ``elapsed`` seconds (per
        track)."""
        # A lost track's height is not extrapolated (ByteTrack).
        # A row, then its columns: numpy's path for a row and a mask at once is slower.
        self.tracks.state[7][self.tracks.lost] = 0.0
        # Unconfirmed tracks are not predicted (ByteTrack): no elapsed time leaves them as
        # they are, cheaper than gathering and scattering the confirmed columns.
        kalman.predict(self.mean, self.cov, elapsed * confirmed)

    def correct(self, ts: F64, measured: F64, det_of: I64, with_box: BoolArray) -> None:
        """Kalman-correct the tracks with a box (``with_box``: ``det_of`` >= 0) with its
        measurement (``measured``, a column per box); they are seen at their camera's time
        (``ts``, per track)."""
        matched = with_box.nonzero()[0]
        if not len(matched):
            return
        # The matched columns gathered, corrected and written back: one copy each way.
        part = _columns(self.tracks.state, matched)
        measured = _columns(measured, det_of[matched])
        kalman.update(part[_MEAN], part[_COV].reshape(3, 4, -1), measured)
        part[_SEEN] = ts[matched]
        self.tracks.state[:, matched] = part
        self.tracks.lost[matched] = False

    def start(
        self,
        dets: _Boxes,
        fresh: I64,
        *,
        first: BoolArray | None,
        next_id: I64,
        det_of: I64,
        drop: BoolArray,
    ) -> tuple[I64, BoolArray]:
        """Start tracks at the boxes ``fresh``, confirmed on their camera's ``first`` frame
        (None: no camera's); returns ``det_of`` and ``drop`` for the tracks with them."""
        cam = dets.layout.cam[fresh]
        ids = np.zeros(len(fresh), dtype=np.int64)
        if first is not None:
            confirm = first[cam]
            ids[confirm] = _hand_out(cam[confirm], next_id)
        state = np.empty((_STATE_ROWS, len(fresh)))
        measured = _columns(dets.measured, fresh)
        kalman.initiate(measured, state[_MEAN], state[_COV].reshape(3, 4, -1))
        state[_START] = state[_SEEN] = dets.numbers[_TS][fresh]
        none = np.zeros(len(fresh), dtype=bool)  # not lost, not dropped
        new = _Tracks(state, ids, none)
        self.tracks = _Tracks.joined([self.tracks, new])
        self.cam = np.concatenate([self.cam, cam])
        det_of = np.concatenate([det_of, fresh])
        drop = np.concatenate([drop, none])
        if len(next_id) > 1:  # more than one camera
            # Each camera's new tracks after its old ones, as a camera alone would have them.
            order = self.cam.argsort(kind="stable")
            self.take(order)
            det_of, drop = det_of[order], drop[order]
        return det_of, drop

    def take(self, index: I64) -> None:
        """Keep the tracks ``index`` selects, in its order."""
        self.tracks = self.tracks.take(index)
        self.cam = self.cam[index]

    def mark_duplicates(self, drop: BoolArray, cameras: int) -> None:
        """A tracked and a lost track of one camera on the same spot: mark in ``drop`` the
        one followed for less time (tracks already in ``drop`` take no part)."""
        is_lost = self.tracks.lost
        lost = (is_lost & ~drop).nonzero()[0]
        if not len(lost):
            return
        tracked = (~(is_lost | drop)).nonzero()[0]
        boxes = kalman.xyah_to_xyxy(self.mean)
        one = cameras == 1  # no cameras to look up
        p, q = _alike(
            _EMPTY if one else self.cam[tracked],
            _columns(boxes, tracked),
            _EMPTY if one else self.cam[lost],
            _columns(boxes, lost),
            cameras,
        )
        if not len(p):  # the usual case
            return
        p, q = tracked[p], lost[q]
        state = self.tracks.state
        age = state[_SEEN] - state[_START]
        older_tracked = age[p] > age[q]
        drop[q[older_tracked]] = True
        drop[p[~older_tracked]] = True

    def scatter(self, trackers: list[ByteTracker], ts: list[float], next_id: I64) -> None:
        """Hand each camera its tracks back (columns sorted by camera), now at ``ts``."""
        by_camera = _Layout.of(self.cam, len(trackers))
        for c, tracker in enumerate(trackers):
            alone = len(trackers) == 1
            tracker._tracks = self.tracks if alone else self.tracks.part(by_camera.rows(c))
            tracker._last_ts = ts[c]
            tracker._next_id = int(next_id[c])


def _alike(a_cam: I64, a: F64, b_cam: I64, b: F64, cameras: int) -> tuple[I64, I64]:
    """The pairs (column of ``a``, column of ``b``) of boxes (x1, y1, x2, y2 rows) of one
    camera whose IoU is above ``1 - _DUPLICATE_DISTANCE``; ``a_cam`` and ``b_cam``
    (sorted) hold each box's camera, read only when there are several ``cameras``.

    A pair's IoU is at most its overlap in x over the larger width (the intersection is at
    most that overlap times the smaller height, the union at least the larger area), and
    the same in y. The IoU is computed only for the pairs that overlap by more than half
    the larger side both ways: usually none, as most lost tracks are nowhere near a
    tracked one."""
    if not a.shape[1] or not b.shape[1]:
        return _EMPTY, _EMPTY
    if cameras == 1:  # every pair at once, x and y together
        pa, pb = a[:, :, None], b[:, None, :]
        sides = np.maximum((a[2:] - a[:2])[:, :, None], (b[2:] - b[:2])[:, None, :])
    else:
        i, j = _sweep(a_cam, a, b_cam, b, None)
        pa, pb = _columns(a, i), _columns(b, j)
        sides = np.maximum(pa[2:] - pa[:2], pb[2:] - pb[:2])
    overlap = np.minimum(pa[2:], pb[2:])
    overlap -= np.maximum(pa[:2], pb[:2])
    overlap += overlap
    close = overlap > sides
    both = close[0] & close[1]
    if cameras == 1:
        i, j = np.divmod(both.reshape(-1).nonzero()[0], b.shape[1])
    else:
        k = (both & (a_cam[i] == b_cam[j])).nonzero()[0]
        i, j = i[k], j[k]
    if len(i):
        iou = corner_iou(_columns(a, i), _columns(b, j))
        alike = 1.0 - iou < _DUPLICATE_DISTANCE
        i, j = i[alike], j[alike]
    return i, j


class _Touching:
    """The pairs (column of ``a``, column of ``b``) of boxes (x1, y1, x2, y2 rows) of one
    camera whose IoU is above 0, with every pair of the cameras that ``every`` marks, and
    their IoU; ``a_cam`` and ``b_cam`` (sorted) hold each box's camera. Any other pair of
    one camera has IoU exactly 0.

    Never an [a, b] grid across cameras: one camera's boxes are tried all against all (a
    few numpy calls on the grid, kept to look pairs up); several cameras' candidates are
    looked up by sorting (``_sweep``) and checked exactly."""

    def __init__(
        self,
        a_cam: I64,
        a: F64,
        b_cam: I64,
        b: F64,
        cameras: int,
        *,
        every: BoolArray | None = None,
    ) -> None:
        self._a, self._b = a, b
        self._grid: F64 | None = None
        if not a.shape[1] or not b.shape[1]:
            self.a_rows, self.b_rows, self.iou = _EMPTY, _EMPTY, np.zeros(0)
            return
        if cameras == 1:
            grid = corner_iou(a[:, :, None], b[:, None, :])
            flat = grid.reshape(-1)
            k = np.arange(flat.size) if every is not None else (flat > 0.0).nonzero()[0]
            self.a_rows, self.b_rows = np.divmod(k, b.shape[1])
            self.iou = flat[k]
            self._grid = grid
            return
        i, j = _sweep(a_cam, a, b_cam, b, every)
        # The candidates' IoU straight away: sorting out those apart in x first would take
        # more numpy calls than the IoU of the few it spares.
        iou = corner_iou(_columns(a, i), _columns(b, j))
        cam = a_cam[i]
        hit = iou > 0.0
        if every is not None:
            hit |= every[cam]
        hit &= cam == b_cam[j]
        self.a_rows, self.b_rows, self.iou = i[hit], j[hit], iou[hit]

    def iou_of(self, a_rows: I64, b_rows: I64) -> F64:
        """The IoU of each pair ``(a_rows[k], b_rows[k])`` of one camera (index arrays that
        broadcast, as ``assign`` hands its ``cost`` them)."""
        if self._grid is None:
            return corner_iou(_columns(self._a, a_rows), _columns(self._b, b_rows))
        return self._grid[a_rows, b_rows]


def _sweep(a_cam: I64, a: F64, b_cam: I64, b: F64, every: BoolArray | None) -> tuple[I64, I64]:
    """Candidate pairs for ``_Touching`` and ``_alike``, a superset of the pairs of one
    camera that overlap in x: ``b``'s boxes sorted by camera and left edge, each box of
    ``a`` takes the ones whose left edge lies between its own left edge less the widest box
    of ``b`` and its right edge (or all of its camera's where ``every`` says). A box of
    ``a`` reaching beyond all of ``b``'s left edges may take some of a neighbouring
    camera's too: the callers keep the pairs of one camera."""
    x0 = np.minimum.reduce(b[0])
    widest = max(np.maximum.reduce(b[2] - b[0]), 0.0)
    # One axis for all cameras: camera ``c``'s left edges in [c * span, (c + 1) * span).
    span = np.maximum.reduce(b[0]) - x0 + widest + 1.0
    slack = span * 1e-9  # the rounding of ``camera * span + x``, far below a pixel
    keys = b_cam * span + (b[0] - x0)
    # The order of boxes with equal keys does not matter: the pairs are a set.
    order = keys.argsort()
    keys = keys[order]
    base = a_cam * span - x0
    lo = keys.searchsorted(base + a[0] - widest - slack, side="left")
    hi = keys.searchsorted(base + a[2] + slack, side="right")
    if every is not None:
        whole = every[a_cam]
        lo[whole] = keys.searchsorted(a_cam[whole] * span - slack, side="left")
        hi[whole] = keys.searchsorted((a_cam[whole] + 1) * span - slack, side="left")
    i, j = _ranges(lo, hi)
    return i, order[j]


def _ranges(lo: I64, hi: I64) -> tuple[I64, I64]:
    """Every ``(i, j)`` with ``lo[i] <= j < hi[i]``, by ``i`` then ``j``."""
    counts = np.maximum(hi - lo, 0)
    i = np.arange(len(lo)).repeat(counts)
    j = np.arange(len(i)) + (lo - (counts.cumsum() - counts)).repeat(counts)
    return i, j


class _Matching:
    """ByteTrack's three matching stages for a batch's tracks and boxes, each camera's with
    its own; ``limit`` is each camera's first-stage match threshold."""

    def __init__(self, track_cam: I64, tracks: F64, dets: _Boxes, limit: list[float]) -> None:
        self._track_cam = track_cam
        self._dets = dets
        self._limit = limit
        # All three stages pair the same track boxes with the same boxes: one IoU for all.
        # Within a first-stage limit of 1 a pair that does not overlap (cost 1) matches too.
        reach = [x >= 1.0 for x in limit]
        self._near = _Touching(
            track_cam, tracks, dets.layout.cam, dets.corners, len(limit),
            every=np.array(reach) if any(reach) else None,
        )  # fmt: skip
        self._t, self._d, iou = self._near.a_rows, self._near.b_rows, self._near.iou
        # Every pair's cost in the stages that weigh the IoU by the box's score and in the
        # one that does not.
        self._weighted_cost = self._cost(iou, self._d, weighted=True)
        self._plain_cost = self._cost(iou, self._d, weighted=False)
        self.det_of = np.empty(len(track_cam), dtype=np.int64)
        self.det_of.fill(-1)

    def associate(self, confirmed: BoolArray, lost: BoolArray) -> tuple[BoolArray, BoolArray]:
        """Fill ``det_of`` (the box each track took, -1 for none). Returns the high-score
        boxes nobody took and the tracks lost at this frame."""
        cameras = len(self._limit)
        t, d, high = self._t, self._d, self._dets.high
        weighted, plain = self._weighted_cost, self._plain_cost
        # 1: confirmed and lost tracks <-> high-score boxes, IoU weighted by score.
        free = high.copy()
        pair_confirmed = confirmed[t]
        if len(set(self._limit)) == 1:  # one limit for all cameras: no need to look it up
            within = weighted <= self._limit[0]
        else:
            within = weighted <= np.array(self._limit)[self._track_cam[t]]
        self._stage(pair_confirmed & high[d] & within, self._limit, weighted=True, free=free)
        # 2: tracks still unmatched that were tracked last frame <-> low-score boxes, IoU only.
        rest = confirmed & ~lost & (self.det_of < 0)
        if np.count_nonzero(rest):  # most frames have some, but a stage costs a dozen calls
            within = plain <= _SECOND_MATCH
            second = [_SECOND_MATCH] * cameras
            self._stage(rest[t] & self._dets.low[d] & within, second, weighted=False, free=None)
        newly_lost = rest & (self.det_of < 0)
        # 3: last frame's new tracks <-> the high-score boxes nobody took.
        if np.count_nonzero(pair_confirmed) < len(t):
            within = weighted <= _UNCONFIRMED_MATCH
            third = [_UNCONFIRMED_MATCH] * cameras
            self._stage(~pair_confirmed & free[d] & within, third, weighted=True, free=free)
        return free, newly_lost

    def _stage(
        self, candidates: BoolArray, limit: list[float], *, weighted: bool, free: BoolArray | None
    ) -> None:
        """Match the pairs ``candidates`` marks (within the stage's ``limit``) on cost
        ``1 - IoU``, the IoU times the box's score when ``weighted``; record each match in
        ``det_of`` and take its box out of ``free``."""
        k = candidates.nonzero()[0]
        if not len(k):
            return
        t, d = assign(
            (self._t[k], self._d[k]),
            self._track_cam,
            self._dets.layout.cam,
            limit,
            lambda rs, cs: self._cost(self._near.iou_of(rs, cs), cs, weighted=weighted),
        )
        self.det_of[t] = d
        if free is not None:
            free[d] = False

    def _cost(self, iou: F64, cols: I64, *, weighted: bool) -> F64:
        """The stage's cost of pairs with boxes ``cols`` from their ``iou``."""
        return 1.0 - (iou * self._dets.scores[cols] if weighted else iou)


def assign(
    pairs: tuple[I64, I64],
    row_camera: I64,
    col_camera: I64,
    limit: Sequence[float] | F64,
    cost: Callable[[I64, I64], F64],
) -> tuple[I64, I64]:
    """Minimum-cost matching of rows to columns of the same camera, where a pair costing
    more than its camera's ``limit`` stays unmatched. ``pairs`` are the (row, column) pairs
    within the limit, ``row_camera`` and ``col_camera`` the camera of every row and column
    (sorted), and ``cost(rows, cols)`` the cost of each pair ``(rows[k], cols[k])``, for
    index arrays that broadcast as numpy's indexing does (rows ``[n, 1]`` and columns
    ``[1, m]``: an ``[n, m]`` grid). Returns the matched rows and their columns.

    Solved exactly as an assignment in which leaving a row or a column unmatched costs
    ``limit / 2`` (so a pair is matched only if it is cheaper than leaving both out), the
    formulation of ``lap.lapjv(..., cost_limit=limit)`` that ByteTrack uses. A row and a
    column that are each other's only candidate form a problem of their own and are
    matched directly, for all cameras at once; only the rest (objects close together) goes
    to the solver, one camera at a time.
    """
    r, c = pairs
    if len(r) < 2:  # nothing competes
        return r, c
    per_row = np.bincount(r, minlength=len(row_camera))
    per_col = np.bincount(c, minlength=len(col_camera))
    # As many rows and columns taken as pairs: no two pairs share one.
    if np.count_nonzero(per_row) == len(r) and np.count_nonzero(per_col) == len(r):
        return r, c
    alone = (per_row[r] == 1) & (per_col[c] == 1)
    rows, cols = [r[alone]], [c[alone]]
    row_open = per_row > 0
    row_open[rows[0]] = False
    col_open = per_col > 0
    col_open[cols[0]] = False
    open_rows, open_cols = row_open.nonzero()[0], col_open.nonzero()[0]
    if len(limit) == 1 or row_camera[open_rows[0]] == row_camera[open_rows[-1]]:
        # All of one camera: its open rows x its open columns, as a grid.
        costs = cost(open_rows[:, None], open_cols[None, :])
        er, ec = _solve(costs, float(limit[int(row_camera[open_rows[0]])]))
        rows.append(open_rows[er])
        cols.append(open_cols[ec])
        return np.concatenate(rows), np.concatenate(cols)
    # Each camera's open rows x its open columns, row by row: one cost call for all.
    rows_cam = row_camera[open_rows]
    n_rows = np.bincount(rows_cam)
    n_cols = np.bincount(col_camera[open_cols], minlength=len(n_rows))
    sizes = list(zip(n_rows.tolist(), n_cols.tolist(), strict=True))
    first_col = (n_cols.cumsum() - n_cols)[rows_cam]
    i, j = _ranges(first_col, first_col + n_cols[rows_cam])
    costs = cost(open_rows[i], open_cols[j])
    at_row = at_col = at_cost = 0
    for camera, (n, m) in enumerate(sizes):
        if not n:  # a camera without open rows has no open columns either
            continue
        er, ec = _solve(costs[at_cost : at_cost + n * m].reshape(n, m), float(limit[camera]))
        rows.append(open_rows[at_row : at_row + n][er])
        cols.append(open_cols[at_col : at_col + m][ec])
        at_row, at_col, at_cost = at_row + n, at_col + m, at_cost + n * m
    return np.concatenate(rows), np.concatenate(cols)


def _solve(cost: F64, limit: float) -> tuple[I64, I64]:
    """``assign`` of one camera's rows and columns that compete, by the solver."""
    n, m = cost.shape
    extended = np.empty((n + m, m + n))
    extended.fill(limit / 2)
    extended[:n, :m] = cost
    extended[n:, m:] = 0.0
    # The rows come back in order, every one assigned: the columns of the first n are
    # what the real rows got.
    ec = linear_sum_assignment(extended)[1][:n]
    er = (ec < m).nonzero()[0]
    return er, ec[er]
