"""The tracker's hard cases on exact synthetic motion: crossings, occlusion gaps around the
lost grace, and a camera whose frame rate halves (time comes from capture timestamps)."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import numpy.typing as npt

from daemon.config.tracking import TrackingConfig
from daemon.postprocess.iou import corner_iou
from daemon.track.bytetrack import ByteTracker, _iou, _step, assign

F64 = npt.NDArray[np.float64]
FPS = 30.0
CONFIG = TrackingConfig(enabled=True, lost_after_s=1.0)


def box(cx: float, cy: float, w: float = 40.0, h: float = 80.0) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def frame(tracker: ByteTracker, ts: float, boxes: list[list[float]], score: float = 0.9) -> F64:
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    result = tracker.update(ts, arr, np.full(len(arr), score))
    return result.track_ids.astype(np.float64)


def test_two_walkers_crossing_keep_their_ids() -> None:
    """A walks right, B walks left along nearly the same row; they overlap fully at the
    crossing, where the one behind is not detected for a few frames."""
    tracker = ByteTracker(CONFIG)
    ids_a: set[int] = set()
    ids_b: set[int] = set()
    for i in range(60):
        ts = i / FPS
        ax, bx = 100 + 8 * i, 572 - 8 * i
        boxes = [box(ax, 300), box(bx, 306)]
        hidden = abs(ax - bx) < 20  # B is behind A
        ids = frame(tracker, ts, boxes[:1] if hidden else boxes)
        if i >= 2:
            ids_a.add(int(ids[0]))
            if not hidden:
                ids_b.add(int(ids[1]))
    assert len(ids_a) == 1
    assert len(ids_b) == 1
    assert ids_a != ids_b
    assert min(ids_a | ids_b) > 0


def _occlusion(gap_s: float) -> tuple[list[int], list[int]]:
    """A walker seen for 1 s, hidden for ``gap_s``, seen again where it would be by then;
    returns the id it had before and the id after the gap, and the ids that ended."""
    tracker = ByteTracker(CONFIG)
    before: set[int] = set()
    after: set[int] = set()
    ended: list[int] = []
    for i in range(int((2 + gap_s) * FPS)):
        ts = i / FPS
        visible = ts < 1.0 or ts >= 1.0 + gap_s
        boxes = [box(100 + 3 * i, 300)] if visible else []
        result = tracker.update(ts, np.asarray(boxes).reshape(-1, 4), np.full(len(boxes), 0.9))
        ended += result.ended.tolist()
        if visible and result.track_ids[0] >= 0:
            (before if ts < 1.0 else after).add(int(result.track_ids[0]))
    assert len(before) == 1
    assert len(after) == 1
    return [*before, *after], ended


def test_gap_shorter_than_lost_grace_keeps_the_id() -> None:
    ids, ended = _occlusion(gap_s=0.6)
    assert ids[0] == ids[1]
    assert ended == []


def test_gap_longer_than_lost_grace_ends_the_track_and_starts_a_new_one() -> None:
    ids, ended = _occlusion(gap_s=1.5)
    assert ended == [ids[0]]
    assert ids[1] != ids[0]


def _fast_walker_x(ts: float) -> float:
    """Accelerates from 300 to 900 px/s over the first 2/3 s, then keeps 900 px/s."""
    if ts < 2 / 3:
        return 50 + 300 * ts + 450 * ts**2
    return 50 + 200 + 200 + 900 * (ts - 2 / 3)


def _ids_of_fast_walker(ts_list: list[float], clock: list[float]) -> list[int]:
    tracker = ByteTracker(CONFIG)
    return [
        int(frame(tracker, t, [box(_fast_walker_x(ts), 300)])[0])
        for ts, t in zip(ts_list, clock, strict=True)
    ]


def test_halved_frame_rate_predicts_by_time_not_by_frame() -> None:
    """A fast object (30 px a frame at 30 fps, boxes 40 px wide): when the camera drops to
    15 fps it moves 60 px between frames. Predicting one frame's worth of motion (30 px)
    leaves an IoU of 1/7, too little to match, and the object would get a new id."""
    ts_list = [i / FPS for i in range(30)] + [1.0 + i / (FPS / 2) for i in range(30)]
    assert set(_ids_of_fast_walker(ts_list, ts_list)) == {1}
    # The same frames on a frame-count clock lose the object once the rate halves.
    frame_clock = [i / FPS for i in range(len(ts_list))]
    assert len(set(_ids_of_fast_walker(ts_list, frame_clock))) > 1


def test_lost_grace_is_in_seconds_at_any_frame_rate() -> None:
    """At 10 fps, 8 missing frames are 0.8 s: within a 1 s grace (a 30-frame grace at
    30 fps is 1 s too, but 8 frames would be 0.27 s; the point is the unit, not the count)."""
    tracker = ByteTracker(CONFIG)
    ids = []
    ended: list[int] = []
    for i in range(40):
        ts = i / 10.0
        hidden = 10 <= i < 19  # last seen at 0.9 s, back at 1.9 s: 1.0 s unseen
        boxes = [] if hidden else [box(100, 300)]
        result = tracker.update(ts, np.asarray(boxes).reshape(-1, 4), np.full(len(boxes), 0.9))
        ended += result.ended.tolist()
        if not hidden and i > 2:
            ids.append(int(result.track_ids[0]))
    assert len(set(ids)) == 1
    assert ids[0] > 0
    assert ended == []


def test_low_score_boxes_only_continue_existing_tracks() -> None:
    """The ByteTrack step: a 0.15 box keeps a track alive but never starts one."""
    tracker = ByteTracker(CONFIG)
    ids = [frame(tracker, i / FPS, [box(100 + 2 * i, 300)], 0.9)[0] for i in range(5)]
    ids += [frame(tracker, (5 + i) / FPS, [box(110 + 2 * i, 300)], 0.15)[0] for i in range(5)]
    assert len(set(ids[1:])) == 1
    assert ids[-1] > 0
    fresh = ByteTracker(CONFIG)
    assert all(frame(fresh, i / FPS, [box(100, 300)], 0.15)[0] == -1 for i in range(5))


def test_a_track_needs_a_second_detection_to_get_an_id() -> None:
    tracker = ByteTracker(CONFIG)
    frame(tracker, 0.0, [])  # the tracker's first frame confirms at once; not this one
    assert frame(tracker, 1 / FPS, [box(100, 300)])[0] == -1
    assert frame(tracker, 2 / FPS, [box(101, 300)])[0] == 1


def test_assignment_leaves_pairs_above_the_limit_unmatched() -> None:
    cost = np.array([[0.1, 0.9], [0.2, 0.95]])
    rows, cols = assign(cost, 0.8)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 0)]


def test_the_compiled_iou_is_the_shared_formula() -> None:
    """The tracker's IoU, pair by pair in compiled code, equals the one NMS and the
    evaluator use to the last bit, degenerate boxes included."""
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 100, size=(4, 300))
    b = rng.uniform(0, 100, size=(4, 300))
    a[2:, :50] = a[:2, :50]  # no area
    expected = corner_iou(a, b)
    got = [_iou(tuple(a[:, k]), tuple(b[:, k])) for k in range(a.shape[1])]
    assert np.array_equal(np.array(got), expected)


def test_a_lost_and_a_tracked_track_on_one_spot_are_one_object() -> None:
    """A stands still and stops being detected; B walks onto A's spot while A is lost. The
    two overlap (IoU above 0.85) only on the frame B arrives: one of them ends there, long
    before the lost grace would end A."""
    tracker = ByteTracker(TrackingConfig(enabled=True, lost_after_s=2.0))
    ended: dict[int, float] = {}
    arrival = 30
    for i in range(arrival + 5):
        ts = i / FPS
        boxes = [box(100.0, 300.0)] if i < 10 else []  # A, seen for the first 10 frames
        boxes.append(box(100.0 + 10.0 * (arrival - i), 300.0))  # B, at A's spot at ``arrival``
        result = tracker.update(ts, np.asarray(boxes), np.full(len(boxes), 0.9))
        ended |= {track_id: ts for track_id in result.ended.tolist()}
    assert list(ended.values()) == [arrival / FPS]
    assert set(ended) <= {1, 2}


def test_any_number_types_run_the_code_compiled_for_floats() -> None:
    """Timestamps and boxes come as int, numpy float32, read-only arrays: none of them makes
    numba compile the tracker again (tens of seconds inside a batch)."""
    tracker = ByteTracker(CONFIG)
    tracker.update(0.0, np.asarray([box(100, 300)]), np.full(1, 0.9))
    compiled = len(cast(Any, _step).signatures)
    read_only = np.asarray([box(102, 300)])
    read_only.setflags(write=False)
    tracker.update(1, np.asarray([box(101, 300)], dtype=np.float32), np.full(1, 0.9, np.float32))
    tracker.update(cast(float, np.float32(1.05)), read_only, np.full(1, 0.9))
    tracker.update(np.float64(1.1), np.asarray([[103, 260, 143, 340]]), np.full(1, 1))
    assert len(cast(Any, _step).signatures) == compiled
