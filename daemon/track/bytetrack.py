"""ByteTrack (Zhang et al., ECCV 2022) per camera, on capture timestamps.

Per frame: predict every confirmed track (a Kalman filter, below), match them to
the high-score detections by IoU weighted by score, then match the tracks still unmatched
to the low-score detections by IoU alone (the "byte" step that keeps occluded objects),
then give last frame's unconfirmed tracks one chance with the remaining high-score boxes,
start tracks from what is left above ``new_track_threshold``, and end tracks unseen for
``lost_after_s``. The association order, thresholds and duplicate-removal rule follow
Ultralytics' ``BYTETracker`` so the same detections get the same tracks (checked by
``tests/unit/test_track_reference.py``); the differences are that time is the capture
timestamp rather than a frame count, and that ids are handed out on confirmation, so
boxes that never became a track burn no id.

The per-frame work runs as compiled loops (``daemon.track.jit``): a frame is one call
into compiled code however many boxes it has. All of the compiled code, the Kalman filter
included, is in this one module: numba checks its disk cache against the file a function
is defined in, so code compiled in from another file could go stale unnoticed.

Matching is an assignment problem solved exactly by SciPy's ``linear_sum_assignment``, but
only for the tracks and boxes that compete for each other (objects close together); a
track and a box that are each other's only candidate are matched directly, which is most
of them.

A camera's tracks (``Tracks``) are rows of one array (each track's Kalman state, then the
capture times it was started and last seen at) with their ids (0 until confirmed) and
whether each is lost.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from numba import objmode
from scipy.optimize import linear_sum_assignment

from daemon.config.tracking import TrackingConfig
from daemon.track.jit import compiled, warm

F64 = npt.NDArray[np.float64]
FloatArray = npt.NDArray[np.floating[Any]]
I64 = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# Low-score boxes are matched on IoU alone with this limit; unconfirmed tracks with this one
# (ByteTrack's fixed second- and third-stage thresholds).
_SECOND_MATCH: Final = 0.5
_UNCONFIRMED_MATCH: Final = 0.7
# A tracked and a lost track overlapping this much (IoU distance below it) are one object.
_DUPLICATE_DISTANCE: Final = 0.15
# Capture timestamps are float seconds: a gap equal to the grace up to rounding is within it.
_TIME_EPS: Final = 1e-6
# Added to every IoU's union, as in ``daemon.postprocess.iou``: boxes without area get IoU 0.
# A copy, not an import: compiled code keeps the value it was compiled with, and the cache
# is checked against this file alone.
_IOU_EPS: Final = 1e-7


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


# ---------------------------------------------------------------------------------------
# ByteTrack's constant-velocity Kalman filter over ``(cx, cy, aspect, height)``, one track at
# a time.
#
# The state is ``[cx, cy, a, h, vcx, vcy, va, vh]``. ByteTrack's filter never mixes the four
# coordinates: its initial covariance, process noise and measurement noise are diagonal,
# and the motion couples each coordinate only with its own velocity. Its 8 x 8 covariance
# is therefore four independent 2 x 2 blocks, kept as their distinct entries: the variance
# of each coordinate (``POS``), its covariance with its velocity (``BOTH``) and the
# variance of the velocity (``VEL``). The same filter in a few scalar operations per
# coordinate instead of 8 x 8 products and solves (``tests/unit/test_track_kalman.py``
# checks it against the textbook matrices). A track's state is the start of its row in the
# tracker's state array; the functions change it in place.
#
# ByteTrack tunes its noise per frame at 30 fps; here time is measured in units of
# ``TIME_UNIT_S`` (1/30 s) and the process noise grows with the elapsed time, so a camera
# running at 30 fps behaves exactly like ByteTrack and one that drops to 15 fps (or skips
# frames under backpressure) predicts twice as far with twice the uncertainty instead of
# being treated as if no time had passed.

TIME_UNIT_S: Final = 1.0 / 30.0
# Where a track's numbers are in its state row.
MEAN: Final = 0
POS: Final = 8
BOTH: Final = 12
VEL: Final = 16
STATE_SIZE: Final = 20
# ByteTrack's noise weights, relative to the box height.
_STD_POSITION: Final = 1.0 / 20
_STD_VELOCITY: Final = 1.0 / 160
# Standard deviations per state component: ``height * _X_WEIGHT + _X_FLOOR``.
_INIT_WEIGHT: Final = (
    np.array([2, 2, 0, 2, 0, 0, 0, 0]) * _STD_POSITION
    + np.array([0, 0, 0, 0, 10, 10, 0, 10]) * _STD_VELOCITY
)
_INIT_FLOOR: Final = np.array([0, 0, 1e-2, 0, 0, 0, 1e-5, 0])
_MOTION_WEIGHT: Final = (
    np.array([1, 1, 0, 1, 0, 0, 0, 0]) * _STD_POSITION
    + np.array([0, 0, 0, 0, 1, 1, 0, 1]) * _STD_VELOCITY
)
_MOTION_FLOOR: Final = _INIT_FLOOR
_MEASURE_WEIGHT: Final = np.array([1, 1, 0, 1]) * _STD_POSITION
_MEASURE_FLOOR: Final = np.array([0, 0, 1e-1, 0])


@compiled
def kalman_initiate(state: F64, cx: float, cy: float, a: float, h: float) -> None:
    """Set ``state`` to the measured box ``(cx, cy, a, h)`` with zero velocity and
    ByteTrack's initial spread."""
    state[MEAN] = cx
    state[MEAN + 1] = cy
    state[MEAN + 2] = a
    state[MEAN + 3] = h
    for j in range(4):
        state[MEAN + 4 + j] = 0.0
        pos = h * _INIT_WEIGHT[j] + _INIT_FLOOR[j]
        vel = h * _INIT_WEIGHT[4 + j] + _INIT_FLOOR[4 + j]
        state[POS + j] = pos * pos
        state[BOTH + j] = 0.0
        state[VEL + j] = vel * vel


@compiled
def kalman_predict(state: F64, elapsed_s: float) -> None:
    """Move ``state`` ``elapsed_s`` on: constant velocity, process noise proportional to
    time."""
    k = max(elapsed_s, 0.0) / TIME_UNIT_S
    h = state[MEAN + 3]
    for j in range(4):
        pos_noise = h * _MOTION_WEIGHT[j] + _MOTION_FLOOR[j]
        vel_noise = h * _MOTION_WEIGHT[4 + j] + _MOTION_FLOOR[4 + j]
        state[MEAN + j] += k * state[MEAN + 4 + j]
        k_vel = k * state[VEL + j]
        state[POS + j] += k * (2.0 * state[BOTH + j] + k_vel)
        state[POS + j] += pos_noise * (pos_noise * k)
        state[BOTH + j] += k_vel
        state[VEL + j] += vel_noise * (vel_noise * k)


@compiled
def kalman_update(state: F64, cx: float, cy: float, a: float, h: float) -> None:
    """Correct ``state`` with the measured box ``(cx, cy, a, h)``."""
    height = state[MEAN + 3]
    measured = (cx, cy, a, h)
    for j in range(4):
        noise = height * _MEASURE_WEIGHT[j] + _MEASURE_FLOOR[j]
        pos, both = state[POS + j], state[BOTH + j]
        innovation_var = pos + noise * noise
        gain_pos, gain_vel = pos / innovation_var, both / innovation_var
        innovation = measured[j] - state[MEAN + j]
        state[MEAN + j] += gain_pos * innovation
        state[MEAN + 4 + j] += gain_vel * innovation
        state[VEL + j] -= gain_vel * both
        state[POS + j] -= gain_pos * pos
        state[BOTH + j] -= gain_pos * both


@compiled
def state_box(state: F64) -> tuple[float, float, float, float]:
    """The box of ``state`` as ``(x1, y1, x2, y2)``."""
    w = state[MEAN + 2] * state[MEAN + 3]
    h = state[MEAN + 3]
    x1 = state[MEAN] - w / 2
    y1 = state[MEAN + 1] - h / 2
    return x1, y1, x1 + w, y1 + h


@compiled
def measure(corners: F64) -> tuple[float, float, float, float]:
    """The box ``[x1, y1, x2, y2]`` as the filter measures it: ``(cx, cy, w / h, h)``."""
    x1, y1, x2, y2 = corners
    w, h = x2 - x1, y2 - y1
    return x1 + w / 2, y1 + h / 2, w / max(h, 1e-9), h


# Where a track's capture times are in its state row, after its Kalman state.
_START: Final = STATE_SIZE
_SEEN: Final = STATE_SIZE + 1
_STATE_SIZE: Final = STATE_SIZE + 2

# A camera's tracks: a state row each, their ids (0 until confirmed) and whether each is lost.
Tracks = tuple[F64, I64, BoolArray]


class ByteTracker:
    """Stable integer track ids for one camera's detections; ids start at 1."""

    def __init__(self, config: TrackingConfig) -> None:
        self.config = config
        # The numbers ``_step`` reads, in its order.
        self._settings = (
            float(config.high_threshold),
            float(config.low_threshold),
            float(config.new_track_threshold),
            float(config.match_threshold),
            float(config.lost_after_s) + _TIME_EPS,
        )
        self._next_id = 1
        self._last_ts: float | None = None
        self._tracks: Tracks = (
            np.zeros((0, _STATE_SIZE)),
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.bool_),
        )

    def __len__(self) -> int:
        """Tracks alive (confirmed, unconfirmed and lost)."""
        return len(self._tracks[1])

    def update(self, ts: float, boxes: FloatArray, scores: FloatArray) -> TrackFrame:
        """Advance to capture time ``ts`` with this frame's ``boxes`` (xyxy) and ``scores``."""
        return update_batch([TrackInput(self, ts, boxes, scores)])[0]

    def _advance(self, ts: float, boxes: FloatArray, scores: FloatArray) -> _Advanced:
        """The tracker at ``ts`` after this frame, and its answer; the tracker itself is
        left as it is."""
        # Writable contiguous float64 and plain floats whatever the caller hands in: numba
        # compiles anew for each new combination of types.
        corners = np.require(boxes, np.float64, ["C", "W"]).reshape(-1, 4)
        weights = np.require(scores, np.float64, ["C", "W"]).reshape(-1)
        ts, last = float(ts), self._last_ts
        # On a camera's first frame no time has passed and its new tracks are confirmed.
        clock = (ts, 0.0 if last is None else ts - last, last is None, self._next_id)
        tracks, track_ids, ended, next_id = _step(
            self._tracks, corners, weights, self._settings, clock
        )
        return _Advanced(self, ts, tracks, next_id, TrackFrame(track_ids, ended))


@dataclass(frozen=True, slots=True)
class _Advanced:
    """A tracker's state after a frame, not yet its own (``update_batch``)."""

    tracker: ByteTracker
    ts: float
    tracks: Tracks
    next_id: int
    frame: TrackFrame

    def commit(self) -> TrackFrame:
        """Make the state the tracker's; returns the frame's answer."""
        tracker = self.tracker
        tracker._tracks, tracker._next_id, tracker._last_ts = self.tracks, self.next_id, self.ts
        return self.frame


def update_batch(frames: Sequence[TrackInput]) -> list[TrackFrame]:
    """Advance each camera's tracker to its frame; the answers in the order of ``frames``.

    Each camera gets exactly what its ``ByteTracker.update`` alone gives it. All or nothing:
    a frame that fails leaves every tracker of the batch as it was, so none has moved on
    without its answer reaching the events. A tracker appears at most once."""
    if len({id(f.tracker) for f in frames}) != len(frames):
        raise ValueError("a tracker appears twice in one batch")
    advanced = [f.tracker._advance(f.ts, f.boxes, f.scores) for f in frames]
    return [a.commit() for a in advanced]


def warm_up() -> None:
    """Compile the tracker's code, or load it from numba's cache: a throwaway tracker
    through two frames. Compiling takes about 20 s on a 2-core x86 machine, which would
    otherwise hold up the first tracked batch; loading it, under a second."""

    def run() -> None:
        tracker = ByteTracker(TrackingConfig(enabled=True))
        boxes = np.array([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
        for ts in (0.0, 0.04):
            tracker.update(ts, boxes, np.array([0.9, 0.2]))

    warm(sys.modules[__name__], run)


def assign(cost: F64, limit: float) -> tuple[I64, I64]:
    """Minimum-cost matching of ``cost``'s rows to its columns where leaving a row or a
    column unmatched costs ``limit / 2`` (so a pair is matched only if it is cheaper than
    leaving both out): the formulation of ``lap.lapjv(..., cost_limit=limit)`` that
    ByteTrack uses, solved exactly by SciPy. Returns the matched rows and their columns."""
    n, m = cost.shape
    extended = np.full((n + m, m + n), limit / 2)
    extended[:n, :m] = cost
    extended[n:, m:] = 0.0
    # The rows come back in order, every one assigned: the columns of the first n are
    # what the real rows got.
    ec = linear_sum_assignment(extended)[1][:n]
    er = (ec < m).nonzero()[0]
    return er.astype(np.int64), ec[er].astype(np.int64)


@compiled
def _step(
    tracks: Tracks,
    corners: F64,
    scores: F64,
    settings: tuple[float, float, float, float, float],
    clock: tuple[float, float, bool, int],
) -> tuple[Tracks, I64, I64, int]:
    """One frame: ``settings`` are the high, low and new-track score thresholds, the
    first-stage match threshold and how long a lost track lives; ``clock`` the frame's
    capture time, the time since the last frame, whether it is the first and the next id
    to hand out.

    Returns the tracks kept, each box's track id (-1: none reported), the ids of the
    confirmed tracks that ended and the next id to hand out."""
    high_threshold, low_threshold, new_track_threshold, match_threshold, lost_after_s = settings
    ts, elapsed, first, next_id = clock
    # New arrays from here on: a frame that fails leaves the tracks as they were.
    tracks = (tracks[0].copy(), tracks[1].copy(), tracks[2])
    ids, lost = tracks[1], tracks[2]
    iou = _predict_and_overlap(tracks, elapsed, corners)
    high, low = _classify(corners, scores, high_threshold, low_threshold)
    det_of = np.full(len(ids), -1, dtype=np.int64)
    free = high.copy()
    confirmed = ids > 0
    # Each pair's cost in the stages that weigh the IoU by the box's score (1 and 3).
    weighted = 1.0 - iou * scores
    # 1: confirmed and lost tracks <-> high-score boxes, IoU weighted by score.
    _match(confirmed, free, match_threshold, weighted, det_of)
    # 2: tracks still unmatched that were tracked last frame <-> low-score boxes, IoU only.
    _match(confirmed & ~lost & (det_of < 0), low, _SECOND_MATCH, 1.0 - iou, det_of)
    # 3: last frame's new tracks <-> the high-score boxes nobody took.
    _match(~confirmed, free, _UNCONFIRMED_MATCH, weighted, det_of)

    state = tracks[0]
    lost, drop = _correct(tracks, det_of, corners, ts, lost_after_s)
    for i in range(len(ids)):  # the unconfirmed tracks that matched, in order
        if not confirmed[i] and det_of[i] >= 0:
            ids[i] = next_id
            next_id += 1
    fresh = (free & (scores >= new_track_threshold)).nonzero()[0]
    new_ids = np.zeros(len(fresh), dtype=np.int64)
    if first:
        new_ids[:] = np.arange(next_id, next_id + len(fresh))
        next_id += len(fresh)
    state = np.concatenate((state, _start(corners, fresh, ts)))
    ids = np.concatenate((ids, new_ids))
    lost = np.concatenate((lost, np.zeros(len(fresh), dtype=np.bool_)))
    drop = np.concatenate((drop, np.zeros(len(fresh), dtype=np.bool_)))
    box_of = np.concatenate((det_of, fresh))
    _mark_duplicates(state, lost, drop)

    track_ids = np.full(len(scores), -1, dtype=np.int64)
    reported = (ids > 0) & ~drop & (box_of >= 0)
    track_ids[box_of[reported]] = ids[reported]
    ended = ids[drop & (ids > 0)]
    keep = (~drop).nonzero()[0]
    return (state[keep], ids[keep], lost[keep]), track_ids, ended, next_id


@compiled
def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """The IoU of boxes ``(x1, y1, x2, y2)``: ``daemon.postprocess.iou.corner_iou``'s
    formula, step by step."""
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = w * h
    union = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    union += max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    union -= inter
    union += _IOU_EPS
    return inter / union


@compiled
def _predict_and_overlap(tracks: Tracks, elapsed: float, corners: F64) -> F64:
    """Predict the confirmed tracks ``elapsed`` seconds on (in place); returns the IoU of
    every track's box with every box."""
    state, ids, lost = tracks
    iou = np.empty((len(ids), len(corners)))
    for i in range(len(ids)):
        if lost[i]:  # a lost track's height is not extrapolated (ByteTrack)
            state[i, MEAN + 7] = 0.0
        if ids[i] > 0:  # unconfirmed tracks are not predicted (ByteTrack)
            kalman_predict(state[i], elapsed)
        box = state_box(state[i])
        for j in range(len(corners)):
            x1, y1, x2, y2 = corners[j]
            iou[i, j] = _iou(box, (x1, y1, x2, y2))
    return iou


@compiled
def _classify(
    corners: F64, scores: F64, high_threshold: float, low_threshold: float
) -> tuple[BoolArray, BoolArray]:
    """Which boxes are high-score and which low-score; a box without area is neither (it
    has no aspect ratio for the filter)."""
    x1, y1, x2, y2 = corners[:, 0], corners[:, 1], corners[:, 2], corners[:, 3]
    valid = (x2 > x1) & (y2 > y1)
    high = valid & (scores >= high_threshold)
    low = valid & (scores > low_threshold) & (scores < high_threshold)
    return high, low


@compiled
def _match(rows: BoolArray, cols: BoolArray, limit: float, cost: F64, det_of: I64) -> None:
    """One matching stage of the tracks ``rows`` with the boxes ``cols`` on ``cost`` (of
    every track with every box); a pair costing more than ``limit`` stays unmatched. Fills
    in ``det_of``, the box each track took (-1: none); the boxes taken leave ``cols``.

    A track and a box that are each other's only candidate are matched directly; the
    tracks and boxes that compete (objects close together) go to ``assign``."""
    within = np.zeros(cost.shape, dtype=np.bool_)
    per_row = np.zeros(len(rows), dtype=np.int64)
    per_col = np.zeros(len(cols), dtype=np.int64)
    candidates = cols.nonzero()[0]
    for i in rows.nonzero()[0]:
        for j in candidates:
            if cost[i, j] <= limit:
                within[i, j] = True
                per_row[i] += 1
                per_col[j] += 1
    for i in (per_row == 1).nonzero()[0]:
        j = within[i].argmax()
        if per_col[j] == 1:
            det_of[i] = j
            cols[j] = False
            per_row[i] = per_col[j] = 0
    open_rows, open_cols = per_row.nonzero()[0], per_col.nonzero()[0]
    if not len(open_rows):
        return
    competing = cost[open_rows][:, open_cols]
    with objmode(r="int64[:]", c="int64[:]"):
        r, c = assign(competing, limit)
    det_of[open_rows[r]] = open_cols[c]
    cols[open_cols[c]] = False


@compiled
def _correct(
    tracks: Tracks, det_of: I64, corners: F64, ts: float, lost_after_s: float
) -> tuple[BoolArray, BoolArray]:
    """Correct each track that took a box (``det_of``) with it, seen at ``ts`` (in place).
    Returns which tracks are lost (the confirmed ones that took none) and which to drop:
    unconfirmed tracks that did not match (they get one chance) and lost ones unseen for
    longer than ``lost_after_s``."""
    state, ids = tracks[0], tracks[1]
    lost = np.zeros(len(ids), dtype=np.bool_)
    drop = np.zeros(len(ids), dtype=np.bool_)
    for i in range(len(ids)):
        if det_of[i] >= 0:
            kalman_update(state[i], *measure(corners[det_of[i]]))
            state[i, _SEEN] = ts
        elif ids[i] == 0:
            drop[i] = True
        else:
            lost[i] = True
            drop[i] = ts - state[i, _SEEN] > lost_after_s
    return lost, drop


@compiled
def _start(corners: F64, fresh: I64, ts: float) -> F64:
    """The states of tracks started at the boxes ``fresh`` at ``ts``."""
    state = np.empty((len(fresh), _STATE_SIZE))
    for i in range(len(fresh)):
        kalman_initiate(state[i], *measure(corners[fresh[i]]))
        state[i, _START] = state[i, _SEEN] = ts
    return state


@compiled
def _mark_duplicates(state: F64, lost: BoolArray, drop: BoolArray) -> None:
    """A tracked and a lost track on the same spot: mark in ``drop`` the one followed for
    less time (tracks already in ``drop`` take no part)."""
    tracked = (~lost & ~drop).nonzero()[0]
    gone = (lost & ~drop).nonzero()[0]
    if not len(gone):
        return
    age = state[:, _SEEN] - state[:, _START]
    mark = drop.copy()
    for p in tracked:
        box = state_box(state[p])
        for q in gone:
            if 1.0 - _iou(box, state_box(state[q])) < _DUPLICATE_DISTANCE:
                mark[q if age[p] > age[q] else p] = True
    drop |= mark
