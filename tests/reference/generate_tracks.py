"""Generate the ByteTrack reference fixture ``tests/data/bytetrack_reference.json``.

Two steps, each in the interpreter that has what it needs::

    # 1. detections: the daemon's own model, letterbox and decoder on real video frames
    .venv/bin/python tests/reference/generate_tracks.py detect --shared ../shared
    # 2. reference ids: Ultralytics' BYTETracker fed exactly those detections (`make venv-ultra`)
    YOLO_OFFLINE=1 .venv-ultra/bin/python tests/reference/generate_tracks.py track

Step 1 stores, per video, the first ``--frames`` frames' detections at score > 0.1 (the
lowest score Ultralytics' ByteTrack looks at) with the capture timestamp ``frame / fps``.
Step 2 adds, per frame, the id BYTETracker (default ``bytetrack.yaml``) gave each detection
(-1: not in its output) and the versions used. ``tests/unit/test_track_reference.py`` feeds the
same detections to ``daemon.track`` and compares the two id assignments (IDF1).

Rows are compact: ``[x1, y1, x2, y2, score, class_id]`` in frame pixels. Step 2 imports
nothing from ``daemon`` so it runs in the Ultralytics interpreter as is; it feeds
``ultralytics.engine.results.Boxes`` (what ``model.track`` hands the tracker), and its
tracker assigns with ``lap.lapjv`` as Ultralytics does by default. The committed fixture:
4 videos x 200 frames, step 1 on the 2-core dev machine (about 5 minutes a video under
load), step 2 with ultralytics 8.4.190 / torch 2.14.1 from ``make venv-ultra`` (``meta``
records the versions and the tracker settings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "bytetrack_reference.json"
VIDEOS = (
    "traffic_highway_b_720p.mp4",
    "pedestrians_street_720p.mp4",
    "crowd_overhead_480p.mp4",
    "mall_entrance_cctv_360p.mp4",
)
# Ultralytics' tracking entry point predicts at conf 0.1 so ByteTrack's second stage has boxes.
DETECT_CONF = 0.1
IOU = 0.7


def _detect(args: argparse.Namespace) -> None:
    import cv2
    import numpy as np

    from daemon.batch.letterbox import letterbox_into
    from daemon.config.model import ModelConfig
    from daemon.infer.factory import load_backend
    from daemon.postprocess.yolo import decode_one

    model = args.shared / "models" / "yolov8n.onnx"
    backend = load_backend(ModelConfig(path=model, max_batch=1))
    h, w = backend.input_hw
    canvas = np.empty((1, h, w, 3), dtype=np.uint8)
    videos: dict[str, Any] = {}
    for name in VIDEOS:
        cap = cv2.VideoCapture(str(args.shared / "videos" / name))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        frames: list[list[Any]] = []
        size = (0, 0)
        while len(frames) < args.frames:
            ok, image = cap.read()
            if not ok:
                break
            size = (int(image.shape[1]), int(image.shape[0]))
            geometry = letterbox_into(np.asarray(image, dtype=np.uint8), canvas[0])
            dets = decode_one(backend.infer(canvas)[0], geometry, DETECT_CONF, IOU)
            rows = [
                [*(round(float(v), 1) for v in box), round(float(score), 3), int(cls)]
                for box, score, cls in zip(dets.boxes, dets.scores, dets.class_ids, strict=True)
            ]
            frames.append([round(len(frames) / fps, 6), rows])
        cap.release()
        videos[name] = {"fps": fps, "width": size[0], "height": size[1], "frames": frames}
        print(f"{name}: {len(frames)} frames", file=sys.stderr)
    backend.close()
    meta = {
        "generator": "tests/reference/generate_tracks.py",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "detect_conf": DETECT_CONF,
        "iou": IOU,
        "row_format": ["x1", "y1", "x2", "y2", "score", "class_id"],
    }
    _write({"meta": meta, "videos": videos})


def ultralytics_ids(video: dict[str, Any]) -> tuple[list[list[int]], argparse.Namespace]:
    """Per frame, the id Ultralytics' BYTETracker (``bytetrack.yaml``) gives each detection
    of ``video`` (a fixture entry), -1 for none; and the tracker settings used."""
    import numpy as np
    from ultralytics.engine.results import Boxes
    from ultralytics.trackers.byte_tracker import BYTETracker
    from ultralytics.utils import ROOT, YAML

    tracker_args = _namespace(YAML.load(ROOT / "cfg" / "trackers" / "bytetrack.yaml"))
    tracker = BYTETracker(tracker_args)
    shape = (video["height"], video["width"])
    out: list[list[int]] = []
    for frame in video["frames"]:
        rows = np.asarray(frame[1], dtype=np.float32).reshape(-1, 6)
        ids = [-1] * len(rows)
        # Output rows: x1, y1, x2, y2, track_id, score, class, detection index.
        for row in tracker.update(Boxes(rows, shape)):
            ids[int(row[-1])] = int(row[4])
        out.append(ids)
    return out, tracker_args


def _track(_: argparse.Namespace) -> None:
    import torch
    import ultralytics

    data = json.loads(FIXTURE.read_text())
    for video in data["videos"].values():
        ids, tracker_args = ultralytics_ids(video)
        for frame, frame_ids in zip(video["frames"], ids, strict=True):
            del frame[2:]
            frame.append(frame_ids)
    data["meta"]["tracker"] = {
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "config": dict(vars(tracker_args)),
    }
    data["meta"]["frame_format"] = ["capture_ts", "detections", "ultralytics_ids"]
    _write(data)


def _namespace(cfg: dict[str, Any]) -> argparse.Namespace:
    return argparse.Namespace(**cfg)


def _write(data: dict[str, Any]) -> None:
    FIXTURE.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="step", required=True)
    detect = sub.add_parser("detect", help="detections from the daemon's model (edgewatch venv)")
    detect.add_argument("--shared", type=Path, default=Path("../shared"))
    detect.add_argument("--frames", type=int, default=200)
    sub.add_parser("track", help="reference ids from Ultralytics' BYTETracker (.venv-ultra)")
    args = parser.parse_args()
    _detect(args) if args.step == "detect" else _track(args)


if __name__ == "__main__":
    main()
