"""ByteTrack (Zhang et al., ECCV 2022) for one camera, on capture timestamps.

Per frame: predict every confirmed track (Kalman, ``daemon.track.kalman``), match them to
the high-score detections by IoU weighted by score, then match the tracks still unmatched
to the low-score detections by IoU alone (the "byte" step that keeps occluded objects),
then give last frame's unconfirmed tracks one chance with the remaining high-score boxes,
start tracks from what is left above ``new_track_threshold``, and end tracks unseen for
``lost_after_s``. The association order, thresholds and duplicate-removal rule follow
Ultralytics' ``BYTETracker`` so the same detections get the same tracks (checked by
``tests/test_track_reference.py``); the differences are that time is the capture
timestamp rather than a frame count, and that ids are handed out on confirmation, so
boxes that never became a track burn no id.

Tracks are kept as parallel numpy arrays (structure of arrays), so a frame costs a fixed
number of vectorised operations however many objects are in view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from daemon.config.tracking import TrackingConfig
from daemon.postprocess.match import box_iou
from daemon.track import kalman

F64 = npt.NDArray[np.float64]
FloatArray = npt.NDArray[np.floating[Any]]
I64 = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_EMPTY: Final = np.zeros(0, dtype=np.int64)
# Low-score boxes are matched on IoU alone with this limit; unconfirmed tracks with this one
# (ByteTrack's fixed second- and third-stage thresholds).
_SECOND_MATCH: Final = 0.5
_UNCONFIRMED_MATCH: Final = 0.7
# A tracked and a lost track overlapping this much (IoU distance below it) are one object.
_DUPLICATE_DISTANCE: Final = 0.15
# Capture timestamps are float seconds: a gap equal to the grace up to rounding is within it.
_TIME_EPS: Final = 1e-6


@dataclass(frozen=True, slots=True)
class TrackFrame:
    """The tracker's answer for one frame.

    ``track_ids[i]`` is the id of the confirmed track detection ``i`` belongs to, or -1.
    ``ended`` holds the ids of confirmed tracks that ended at this frame.
    """

    track_ids: I64
    ended: I64


@dataclass(frozen=True, slots=True)
class _Step:
    """One frame's association, as indices into the track arrays and the detections."""

    tracks: I64  # matched tracks ...
    dets: I64  # ... and their detections
    newly_lost: I64
    promoted: I64  # unconfirmed tracks matched again: confirmed now
    dropped: I64  # unconfirmed tracks not matched again
    fresh: I64  # detections that start tracks


def assign(cost: F64, limit: float) -> tuple[I64, I64]:
    """Minimum-cost matching where a pair costing more than ``limit`` stays unmatched.

    Solved exactly as an assignment in which leaving a row or a column unmatched costs
    ``limit / 2`` (so a pair is matched only if it is cheaper than leaving both out), the
    formulation of ``lap.lapjv(..., cost_limit=limit)`` that ByteTrack uses.
    """
    rows = np.flatnonzero((cost <= limit).any(axis=1))
    cols = np.flatnonzero((cost <= limit).any(axis=0))
    if not len(rows) or not len(cols):
        return _EMPTY, _EMPTY
    n, m = len(rows), len(cols)
    extended = np.full((n + m, m + n), limit / 2)
    extended[:n, :m] = cost[np.ix_(rows, cols)]
    extended[n:, m:] = 0.0
    r, c = linear_sum_assignment(extended)
    keep = (r < n) & (c < m)
    return rows[r[keep]], cols[c[keep]]


class ByteTracker:
    """Stable integer track ids for one camera's detections; ids start at 1."""

    def __init__(self, config: TrackingConfig) -> None:
        self._cfg = config
        self._next_id = 1
        self._last_ts: float | None = None
        self._mean = np.zeros((0, 8))
        self._cov = np.zeros((0, 8, 8))
        self._ids = np.zeros(0, dtype=np.int64)  # 0 until confirmed
        self._lost = np.zeros(0, dtype=bool)
        self._start_ts = np.zeros(0)
        self._seen_ts = np.zeros(0)

    def __len__(self) -> int:
        """Tracks alive (confirmed, unconfirmed and lost)."""
        return len(self._ids)

    def update(self, ts: float, boxes: FloatArray, scores: FloatArray) -> TrackFrame:
        """Advance to capture time ``ts`` with this frame's ``boxes`` (xyxy) and ``scores``."""
        first = self._last_ts is None
        elapsed = 0.0 if self._last_ts is None else ts - self._last_ts
        self._last_ts = ts
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        pool = np.flatnonzero(self._ids > 0)
        if len(pool):
            mean = self._mean[pool]
            # A lost track's height is not extrapolated (ByteTrack).
            mean[self._lost[pool], 7] = 0.0
            self._mean[pool], self._cov[pool] = kalman.predict(mean, self._cov[pool], elapsed)
        step = self._associate(boxes, scores)

        self._mean[step.tracks], self._cov[step.tracks] = kalman.update(
            self._mean[step.tracks], self._cov[step.tracks], kalman.xyxy_to_xyah(boxes[step.dets])
        )
        self._lost[step.tracks] = False
        self._seen_ts[step.tracks] = ts
        self._lost[step.newly_lost] = True
        self._ids[step.promoted] = self._take_ids(len(step.promoted))
        det_of = np.full(len(self._ids), -1, dtype=np.int64)
        det_of[step.tracks] = step.dets
        drop = self._lost & (ts - self._seen_ts > self._cfg.lost_after_s + _TIME_EPS)
        drop[step.dropped] = True

        self._append(ts, boxes[step.fresh], confirmed=first)
        det_of = np.concatenate([det_of, step.fresh])
        drop = np.concatenate([drop, np.zeros(len(step.fresh), dtype=bool)])
        drop |= self._duplicates(drop)
        ended = self._ids[drop & (self._ids > 0)]
        self._keep(~drop)
        det_of = det_of[~drop]
        track_ids = np.full(len(boxes), -1, dtype=np.int64)
        reported = (det_of >= 0) & (self._ids > 0)
        track_ids[det_of[reported]] = self._ids[reported]
        return TrackFrame(track_ids, ended)

    def _associate(self, boxes: F64, scores: F64) -> _Step:
        """ByteTrack's three matching stages on the predicted tracks (indices into arrays)."""
        cfg = self._cfg
        # A box without area has no aspect ratio for the Kalman state.
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        high = np.flatnonzero(valid & (scores >= cfg.high_threshold))
        low = np.flatnonzero(valid & (scores > cfg.low_threshold) & (scores < cfg.high_threshold))
        pool = np.flatnonzero(self._ids > 0)
        unconfirmed = np.flatnonzero(self._ids == 0)
        track_boxes = kalman.xyah_to_xyxy(self._mean)

        # 1: confirmed and lost tracks <-> high-score boxes, IoU weighted by score.
        cost = 1.0 - box_iou(track_boxes[pool], boxes[high]) * scores[high]
        t1, d1 = assign(cost, cfg.match_threshold)
        rest = np.setdiff1d(pool, pool[t1], assume_unique=True)
        high_left = np.setdiff1d(high, high[d1], assume_unique=True)

        # 2: tracks still unmatched that were tracked last frame <-> low-score boxes.
        rest = rest[~self._lost[rest]]
        t2, d2 = assign(1.0 - box_iou(track_boxes[rest], boxes[low]), _SECOND_MATCH)

        # 3: last frame's new tracks <-> the high-score boxes nobody took.
        cost = 1.0 - box_iou(track_boxes[unconfirmed], boxes[high_left]) * scores[high_left]
        t3, d3 = assign(cost, _UNCONFIRMED_MATCH)
        fresh = np.setdiff1d(high_left, high_left[d3], assume_unique=True)
        return _Step(
            tracks=np.concatenate([pool[t1], rest[t2], unconfirmed[t3]]),
            dets=np.concatenate([high[d1], low[d2], high_left[d3]]),
            newly_lost=np.setdiff1d(rest, rest[t2], assume_unique=True),
            promoted=unconfirmed[t3],
            dropped=np.setdiff1d(unconfirmed, unconfirmed[t3], assume_unique=True),
            fresh=fresh[scores[fresh] >= cfg.new_track_threshold],
        )

    def _take_ids(self, count: int) -> I64:
        ids = np.arange(self._next_id, self._next_id + count, dtype=np.int64)
        self._next_id += count
        return ids

    def _append(self, ts: float, boxes: F64, *, confirmed: bool) -> None:
        """Start tracks at ``boxes``; on a tracker's first frame they are confirmed at once."""
        n = len(boxes)
        mean, cov = kalman.initiate(kalman.xyxy_to_xyah(boxes))
        ids = self._take_ids(n) if confirmed else np.zeros(n, dtype=np.int64)
        self._mean = np.concatenate([self._mean, mean])
        self._cov = np.concatenate([self._cov, cov])
        self._ids = np.concatenate([self._ids, ids])
        self._lost = np.concatenate([self._lost, np.zeros(n, dtype=bool)])
        self._start_ts = np.concatenate([self._start_ts, np.full(n, ts)])
        self._seen_ts = np.concatenate([self._seen_ts, np.full(n, ts)])

    def _keep(self, keep: BoolArray) -> None:
        self._mean = self._mean[keep]
        self._cov = self._cov[keep]
        self._ids = self._ids[keep]
        self._lost = self._lost[keep]
        self._start_ts = self._start_ts[keep]
        self._seen_ts = self._seen_ts[keep]

    def _duplicates(self, dropped: BoolArray) -> BoolArray:
        """A tracked and a lost track on the same spot: drop the one followed for less time."""
        tracked = np.flatnonzero(~self._lost & ~dropped)
        lost = np.flatnonzero(self._lost & ~dropped)
        drop = np.zeros(len(self._ids), dtype=bool)
        if not len(tracked) or not len(lost):
            return drop
        boxes = kalman.xyah_to_xyxy(self._mean)
        close = 1.0 - box_iou(boxes[tracked], boxes[lost]) < _DUPLICATE_DISTANCE
        p, q = np.nonzero(close)
        age = self._seen_ts - self._start_ts
        older_tracked = age[tracked[p]] > age[lost[q]]
        drop[lost[q[older_tracked]]] = True
        drop[tracked[p[~older_tracked]]] = True
        return drop
