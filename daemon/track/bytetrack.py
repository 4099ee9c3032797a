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
    per_row = ok.sum(axis=1)
    per_col = ok.sum(axis=0)
    r, c = np.nonzero(ok)
    alone = (per_row[r] == 1) & (per_col[c] == 1)
    if alone.all():
        return r, c
    row_open = per_row > 0
    row_open[r[alone]] = False
    col_open = per_col > 0
    col_open[c[alone]] = False
    rest_r, rest_c = np.flatnonzero(row_open), np.flatnonzero(col_open)
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
        pool = np.flatnonzero(confirmed)
        if len(pool):
            # A lost track's height is not extrapolated (ByteTrack).
            self._mean[self._lost, 7] = 0.0
            self._mean[pool], self._cov[pool] = kalman.predict(
                self._mean[pool], self._cov[pool], elapsed
            )
        # A box without area has no aspect ratio for the Kalman state.
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        high = valid & (scores >= cfg.high_threshold)
        low = valid & (scores > cfg.low_threshold) & ~high
        # One IoU matrix (every track x every box) serves all three stages.
        iou = box_iou(kalman.xyah_to_xyxy(self._mean), boxes)
        fused = iou * scores
        track_used = np.zeros(len(self._ids), dtype=bool)
        det_of = np.full(len(self._ids), -1, dtype=np.int64)

        # 1: confirmed and lost tracks <-> high-score boxes, IoU weighted by score.
        self._stage(fused, pool, high, cfg.match_threshold, track_used=track_used, det_of=det_of)
        # 2: tracks still unmatched that were tracked last frame <-> low-score boxes, IoU only.
        rest = np.flatnonzero(confirmed & ~track_used & ~self._lost)
        self._stage(iou, rest, low, _SECOND_MATCH, track_used=track_used, det_of=det_of)
        newly_lost = rest[~track_used[rest]]
        # 3: last frame's new tracks <-> the high-score boxes nobody took.
        unconfirmed = np.flatnonzero(~confirmed)
        taken = np.zeros(len(scores), dtype=bool)
        taken[det_of[track_used]] = True
        self._stage(
            fused,
            unconfirmed,
            high & ~taken,
            _UNCONFIRMED_MATCH,
            track_used=track_used,
            det_of=det_of,
        )
        taken[det_of[track_used]] = True
        fresh = np.flatnonzero(high & ~taken & (scores >= cfg.new_track_threshold))

        self._correct(ts, boxes, np.flatnonzero(track_used), det_of)
        self._lost[newly_lost] = True
        promoted = unconfirmed[track_used[unconfirmed]]
        if len(promoted):
            self._ids[promoted] = self._take_ids(len(promoted))
        drop = self._lost & (ts - self._seen_ts > cfg.lost_after_s + _TIME_EPS)
        drop[unconfirmed[~track_used[unconfirmed]]] = True
        if len(fresh):
            self._append(ts, boxes[fresh], confirmed=first)
            det_of = np.concatenate([det_of, fresh])
            drop = np.concatenate([drop, np.zeros(len(fresh), dtype=bool)])
        drop |= self._duplicates(drop)
        ended = self._ids[drop & (self._ids > 0)]
        if drop.any():
            self._keep(~drop)
            det_of = det_of[~drop]
        track_ids = np.full(len(scores), -1, dtype=np.int64)
        reported = (det_of >= 0) & (self._ids > 0)
        track_ids[det_of[reported]] = self._ids[reported]
        return TrackFrame(track_ids, ended)

    @staticmethod
    def _stage(
        similarity: F64,
        tracks: I64,
        dets: BoolArray,
        limit: float,
        *,
        track_used: BoolArray,
        det_of: I64,
    ) -> None:
        """Match ``tracks`` to the boxes in ``dets`` on cost ``1 - similarity``; record the
        pairs in ``track_used`` / ``det_of``."""
        cols = np.flatnonzero(dets)
        if not len(tracks) or not len(cols):
            return
        t, d = assign(1.0 - similarity[tracks[:, None], cols], limit)
        track_used[tracks[t]] = True
        det_of[tracks[t]] = cols[d]

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

    def _duplicates(self, dropped: BoolArray) -> BoolArray:
        """A tracked and a lost track on the same spot: drop the one followed for less time."""
        drop = np.zeros(len(self._ids), dtype=bool)
        lost = np.flatnonzero(self._lost & ~dropped)
        if not len(lost):
            return drop
        tracked = np.flatnonzero(~self._lost & ~dropped)
        boxes = kalman.xyah_to_xyxy(self._mean)
        close = 1.0 - box_iou(boxes[tracked], boxes[lost]) < _DUPLICATE_DISTANCE
        p, q = np.nonzero(close)
        age = self._seen_ts - self._start_ts
        older_tracked = age[tracked[p]] > age[lost[q]]
        drop[lost[q[older_tracked]]] = True
        drop[tracked[p[~older_tracked]]] = True
        return drop
