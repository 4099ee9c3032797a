"""ByteTrack (Zhang et al., ECCV 2022) for one camera, on capture timestamps.

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
from daemon.postprocess.iou import pairwise_iou
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


def assign(cost: F64, limit: float) -> tuple[I64, I64]:
    """Minimum-cost matching where a pair costing more than ``limit`` stays unmatched.

    Solved exactly as an assignment in which leaving a row or a column unmatched costs
    ``limit / 2`` (so a pair is matched only if it is cheaper than leaving both out), the
    formulation of ``lap.lapjv(..., cost_limit=limit)`` that ByteTrack uses. A row and a
    column that are each other's only candidate form a problem of their own and are
    matched directly; only the rest (objects close together) goes to the solver.
    """
    if not cost.size:
        return _EMPTY, _EMPTY
    ok = cost <= limit
    # Ufunc reductions directly: ``ndarray.sum``/``all`` go through Python wrappers that cost
    # more than the work at tracker sizes.
    per_row = np.add.reduce(ok, axis=1)
    per_col = np.add.reduce(ok, axis=0)
    r, c = ok.nonzero()
    if np.maximum.reduce(per_row) <= 1 and np.maximum.reduce(per_col) <= 1:
        return r, c
    alone = (per_row[r] == 1) & (per_col[c] == 1)
    row_open = per_row > 0
    row_open[r[alone]] = False
    col_open = per_col > 0
    col_open[c[alone]] = False
    rest_r, rest_c = row_open.nonzero()[0], col_open.nonzero()[0]
    n, m = len(rest_r), len(rest_c)
    extended = np.full((n + m, m + n), limit / 2)
    extended[:n, :m] = cost[rest_r[:, None], rest_c]
    extended[n:, m:] = 0.0
    er, ec = linear_sum_assignment(extended)
    keep = (er < n) & (ec < m)
    return (
        np.concatenate([r[alone], rest_r[er[keep]]]),
        np.concatenate([c[alone], rest_c[ec[keep]]]),
    )


class ByteTracker:
    """Stable integer track ids for one camera's detections; ids start at 1."""

    def __init__(self, config: TrackingConfig) -> None:
        self._cfg = config
        self._next_id = 1
        self._last_ts: float | None = None
        self._mean = np.zeros((0, 8))
        self._cov = np.zeros((0, 3, 4))
        self._ids = np.zeros(0, dtype=np.int64)  # 0 until confirmed
        self._lost = np.zeros(0, dtype=bool)
        self._start_ts = np.zeros(0)
        self._seen_ts = np.zeros(0)

    def __len__(self) -> int:
        """Tracks alive (confirmed, unconfirmed and lost)."""
        return len(self._ids)

    def update(self, ts: float, boxes: FloatArray, scores: FloatArray) -> TrackFrame:
        """Advance to capture time ``ts`` with this frame's ``boxes`` (xyxy) and ``scores``."""
        cfg = self._cfg
        first = self._last_ts is None
        elapsed = 0.0 if self._last_ts is None else ts - self._last_ts
        self._last_ts = ts
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        confirmed = self._ids > 0
        unconfirmed_mask = ~confirmed
        if len(confirmed):
            # A lost track's height is not extrapolated (ByteTrack).
            self._mean[self._lost, 7] = 0.0
            # Unconfirmed tracks are not predicted (ByteTrack): no elapsed time leaves them as
            # they are, cheaper than gathering and scattering the confirmed rows.
            self._mean, self._cov = kalman.predict(self._mean, self._cov, elapsed * confirmed)
        # A box without area has no aspect ratio for the Kalman state.
        valid = np.logical_and.reduce(boxes[:, 2:] > boxes[:, :2], axis=1)
        high = valid & (scores >= cfg.high_threshold)
        low = valid & (scores > cfg.low_threshold) & (scores < cfg.high_threshold)
        # One IoU matrix (every track x every box) serves all three stages.
        iou = pairwise_iou(kalman.xyah_to_xyxy(self._mean), boxes)
        fused = iou * scores
        det_of, newly_lost, free = self._associate(iou, fused, confirmed, high, low)
        fresh = (free & (scores >= cfg.new_track_threshold)).nonzero()[0]
        matched = det_of >= 0
        self._correct(ts, boxes, matched.nonzero()[0], det_of)
        self._lost[newly_lost] = True
        promoted = (unconfirmed_mask & matched).nonzero()[0]
        if len(promoted):
            self._ids[promoted] = self._take_ids(len(promoted))
        drop = self._lost & (ts - self._seen_ts > cfg.lost_after_s + _TIME_EPS)
        drop |= unconfirmed_mask & ~matched
        if len(fresh):
            self._append(ts, boxes[fresh], confirmed=first)
            det_of = np.concatenate([det_of, fresh])
            drop = np.concatenate([drop, np.zeros(len(fresh), dtype=bool)])
        self._mark_duplicates(drop)
        gone = drop.nonzero()[0]
        ended = _EMPTY
        if len(gone):
            ended = self._ids[gone]
            ended = ended[ended > 0]
            self._keep(~drop)
            det_of = det_of[~drop]
        track_ids = np.empty(len(scores), dtype=np.int64)
        track_ids.fill(-1)
        reported = (det_of >= 0) & (self._ids > 0)
        track_ids[det_of[reported]] = self._ids[reported]
        return TrackFrame(track_ids, ended)

    def _associate(
        self, iou: F64, fused: F64, confirmed: BoolArray, high: BoolArray, low: BoolArray
    ) -> tuple[I64, I64, BoolArray]:
        """ByteTrack's three matching stages. Returns the box each track took (-1 for none),
        the tracks lost at this frame and the high-score boxes nobody took."""
        det_of = np.empty(len(confirmed), dtype=np.int64)
        det_of.fill(-1)
        # 1: confirmed and lost tracks <-> high-score boxes, IoU weighted by score.
        free = high.copy()
        pool = confirmed.nonzero()[0]
        _stage(fused, pool, high, self._cfg.match_threshold, det_of=det_of, free=free)
        # 2: tracks still unmatched that were tracked last frame <-> low-score boxes, IoU only.
        rest = (confirmed & ~self._lost & (det_of < 0)).nonzero()[0]
        _stage(iou, rest, low, _SECOND_MATCH, det_of=det_of, free=None)
        newly_lost = rest[det_of[rest] < 0]
        # 3: last frame's new tracks <-> the high-score boxes nobody took.
        unconfirmed = (~confirmed).nonzero()[0]
        _stage(fused, unconfirmed, free, _UNCONFIRMED_MATCH, det_of=det_of, free=free)
        return det_of, newly_lost, free

    def _correct(self, ts: float, boxes: F64, matched: I64, det_of: I64) -> None:
        """Kalman-correct the ``matched`` tracks with their boxes; they are seen at ``ts``."""
        if not len(matched):
            return
        self._mean[matched], self._cov[matched] = kalman.update(
            self._mean[matched], self._cov[matched], kalman.xyxy_to_xyah(boxes[det_of[matched]])
        )
        self._lost[matched] = False
        self._seen_ts[matched] = ts

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

    def _mark_duplicates(self, drop: BoolArray) -> None:
        """A tracked and a lost track on the same spot: mark in ``drop`` the one followed for
        less time (tracks already in ``drop`` take no part)."""
        lost = (self._lost & ~drop).nonzero()[0]
        if not len(lost):
            return
        tracked = (~(self._lost | drop)).nonzero()[0]
        boxes = kalman.xyah_to_xyxy(self._mean)
        p, q = (1.0 - pairwise_iou(boxes[tracked], boxes[lost]) < _DUPLICATE_DISTANCE).nonzero()
        if not len(p):
            return
        age = self._seen_ts - self._start_ts
        older_tracked = age[tracked[p]] > age[lost[q]]
        drop[lost[q[older_tracked]]] = True
        drop[tracked[p[~older_tracked]]] = True


def _stage(
    similarity: F64,
    tracks: I64,
    dets: BoolArray,
    limit: float,
    *,
    det_of: I64,
    free: BoolArray | None,
) -> None:
    """Match ``tracks`` to the boxes in ``dets`` on cost ``1 - similarity``; record each pair in
    ``det_of`` and take its box out of ``free``."""
    cols = dets.nonzero()[0]
    if not len(tracks) or not len(cols):
        return
    t, d = assign(1.0 - similarity.take(tracks, axis=0).take(cols, axis=1), limit)
    det_of[tracks[t]] = cols[d]
    if free is not None:
        free[cols[d]] = False
