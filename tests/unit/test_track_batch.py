"""Cameras tracked together in one batch get exactly what each gets tracked alone, whatever
shares the batch: different configurations and scenes, cameras missing from batches, a
camera without boxes, one whose tracks all end, and frames that must be skipped."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from daemon.config.model import CameraConfig
from daemon.config.secrets import Secret
from daemon.config.tracking import TrackingConfig
from daemon.postprocess.yolo import Detections
from daemon.track.bytetrack import ByteTracker, TrackInput, update_batch
from daemon.track.events import TrackEvent
from daemon.track.stage import CameraFrame, CameraTracking, track_batch

F64 = npt.NDArray[np.float64]
FPS = 25.0
FRAMES = 150
NAMES = ("person", "car")
CONFIGS = {
    "crowd": TrackingConfig(enabled=True),
    "strict": TrackingConfig(
        enabled=True, high_threshold=0.5, low_threshold=0.2, new_track_threshold=0.6,
        match_threshold=0.7, lost_after_s=0.3, min_hits=1,
    ),
    "empty": TrackingConfig(enabled=True, lost_after_s=2.0),
    "leaving": TrackingConfig(enabled=True, lost_after_s=0.2, match_threshold=0.9),
    "sparse": TrackingConfig(enabled=True, min_hits=5, new_track_threshold=0.4),
    # A first-stage limit of 1 lets boxes that do not overlap a track match it.
    "loose": TrackingConfig(enabled=True, match_threshold=1.0),
}  # fmt: skip


@dataclass(frozen=True)
class Frame:
    ts: float
    boxes: F64
    scores: F64


def _scene(seed: int, objects: int, *, until: int = FRAMES) -> list[Frame]:
    """Objects walking in a 640x480 frame, crowded enough that boxes overlap and the solver
    is needed; boxes jitter, scores span the high and low bands, some boxes are missed, and
    an object leaving the frame comes back elsewhere. No boxes from frame ``until`` on."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform([0, 0], [640, 480], size=(objects, 2))
    vel = rng.normal(0, 5, size=(objects, 2))
    size = rng.uniform([20, 40], [70, 140], size=(objects, 2))
    frames = []
    for i in range(FRAMES):
        pos += vel
        out = (pos < 0).any(axis=1) | (pos > [640, 480]).any(axis=1)
        pos[out] = rng.uniform([0, 0], [640, 480], size=(int(out.sum()), 2))
        seen = (rng.random(objects) > 0.1) & (i < until)
        centre = pos[seen] + rng.normal(0, 1.5, size=(int(seen.sum()), 2))
        half = size[seen] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        frames.append(Frame(i / FPS, boxes, rng.uniform(0.12, 0.95, size=len(boxes))))
    return frames


def _scenes() -> dict[str, list[Frame]]:
    return {
        "crowd": _scene(1, 30),
        "strict": _scene(2, 12),
        "empty": _scene(3, 0),
        "leaving": _scene(4, 8, until=60),
        "sparse": _scene(5, 10),
        "loose": _scene(6, 6),
    }


def _present(camera: str, i: int) -> bool:
    """``sparse`` misses two frames in three: it is absent from those batches."""
    return camera != "sparse" or i % 3 == 0


Result = tuple[list[int], list[int]]


def _alone(scenes: dict[str, list[Frame]]) -> dict[str, list[Result]]:
    """Each camera tracked on its own, one update per frame."""
    out: dict[str, list[Result]] = {}
    for camera, frames in scenes.items():
        tracker = ByteTracker(CONFIGS[camera])
        out[camera] = []
        for i, f in enumerate(frames):
            if _present(camera, i):
                r = tracker.update(f.ts, f.boxes, f.scores)
                out[camera].append((r.track_ids.tolist(), r.ended.tolist()))
    return out


def _batched(
    scenes: dict[str, list[Frame]], compose: np.random.Generator | None
) -> dict[str, list[Result]]:
    """All cameras present at a frame in one batch, or (``compose``) split into batches of
    random sizes and order."""
    trackers = {camera: ByteTracker(CONFIGS[camera]) for camera in scenes}
    out: dict[str, list[Result]] = {camera: [] for camera in scenes}
    for i in range(FRAMES):
        present = [camera for camera in scenes if _present(camera, i)]
        batches = [present]
        if compose is not None:
            order = [present[k] for k in compose.permutation(len(present))]
            cuts = sorted(compose.integers(0, len(order) + 1, size=2).tolist())
            batches = [order[: cuts[0]], order[cuts[0] : cuts[1]], order[cuts[1] :]]
        for batch in batches:
            frames = [scenes[camera][i] for camera in batch]
            inputs = [
                TrackInput(trackers[c], f.ts, f.boxes, f.scores)
                for c, f in zip(batch, frames, strict=True)
            ]
            for camera, r in zip(batch, update_batch(inputs), strict=True):
                out[camera].append((r.track_ids.tolist(), r.ended.tolist()))
    return out


@pytest.mark.parametrize("compose", [None, 0, 1, 2], ids=["one-batch", "mix0", "mix1", "mix2"])
def test_a_camera_gets_the_same_ids_and_ends_whatever_shares_its_batch(compose: int | None) -> None:
    scenes = _scenes()
    alone = _alone(scenes)
    # The scenes exercise what they are meant to: ids handed out, tracks ended.
    assert max(max(ids, default=0) for ids, _ in alone["crowd"]) > 30
    assert all(ids == [] and ended == [] for ids, ended in alone["empty"])
    leaving_ended = sorted(t for _, ended in alone["leaving"] for t in ended)
    leaving_ids = {t for ids, _ in alone["leaving"] for t in ids if t > 0}
    assert leaving_ended == sorted(leaving_ids)
    rng = None if compose is None else np.random.default_rng(compose)
    assert _batched(scenes, rng) == alone


def test_the_same_tracker_twice_in_a_batch_is_refused() -> None:
    tracker = ByteTracker(CONFIGS["crowd"])
    frame = TrackInput(tracker, 0.0, np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(ValueError, match="twice"):
        update_batch([frame, frame])


def test_a_batch_that_fails_leaves_every_tracker_as_it_was() -> None:
    """The second camera's boxes cannot be read: the batch raises, and the first camera has
    not moved on either (its ended tracks would never reach the events)."""
    scenes = _scenes()
    kept, untouched = ByteTracker(CONFIGS["crowd"]), ByteTracker(CONFIGS["crowd"])
    broken = ByteTracker(CONFIGS["leaving"])
    frames = scenes["crowd"]
    for f in frames[:20]:
        kept.update(f.ts, f.boxes, f.scores)
        untouched.update(f.ts, f.boxes, f.scores)
    f = frames[20]
    bad = TrackInput(broken, f.ts, np.zeros(5), np.zeros(1))  # five numbers are no boxes
    with pytest.raises(ValueError, match="reshape"):
        update_batch([TrackInput(kept, f.ts, f.boxes, f.scores), bad])
    for f in frames[20:40]:
        a, b = kept.update(f.ts, f.boxes, f.scores), untouched.update(f.ts, f.boxes, f.scores)
        assert a.track_ids.tolist() == b.track_ids.tolist()
        assert a.ended.tolist() == b.ended.tolist()


def _stages() -> dict[str, CameraTracking]:
    return {
        camera: CameraTracking(CameraConfig(id=camera, url=Secret(f"{camera}.mp4")), cfg, NAMES)
        for camera, cfg in CONFIGS.items()
    }


def _dets(f: Frame) -> Detections:
    classes = np.arange(len(f.scores), dtype=np.int64) % len(NAMES)
    return Detections(f.boxes.astype(np.float32), f.scores.astype(np.float32), classes)


EventKey = tuple[str, str, int, float]


def _keys(events: list[TrackEvent]) -> list[EventKey]:
    return [(e.camera, e.type.value, e.track_id, e.last_seen_ts) for e in events]


def test_stage_batches_skip_old_frames_and_closed_cameras_like_single_frames() -> None:
    """The batch worker's path. Frame 41 comes again and then frame 40 (batches finishing
    out of order): both are skipped; ``strict`` closes at frame 100; ``sparse`` is absent
    from most batches. Each camera gets the events it gets frame by frame."""
    scenes = _scenes()
    alone, together = _stages(), _stages()
    got_alone: list[EventKey] = []
    got_together: list[EventKey] = []
    for i in [*range(42), 41, 40, *range(42, FRAMES)]:
        if i == 100:
            got_alone += _keys(alone["strict"].close())
            got_together += _keys(together["strict"].close())
        batch = []
        for camera, frames in scenes.items():
            if _present(camera, i):
                frame = CameraFrame(frames[i].ts, (640, 480), _dets(frames[i]))
                batch.append((together[camera], frame))
                got_alone += _keys(alone[camera].process(frame.ts, frame.frame_size, frame.dets))
        got_together += _keys(track_batch(batch))
    assert [s.skipped for s in together.values()] == [s.skipped for s in alone.values()]
    assert together["crowd"].skipped == 2
    assert got_together == got_alone
    assert {key[0] for key in got_alone} == {"crowd", "strict", "leaving", "sparse", "loose"}
    assert not [key for key in got_alone[-50:] if key[0] == "strict"]
