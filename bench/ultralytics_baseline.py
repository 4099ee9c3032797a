"""The peer for ``edgewatch bench e2e --baseline ultralytics``: Ultralytics' own multi-stream
prediction publishing the same detection payloads over MQTT. Runs in its own process with the
Python that has Ultralytics (``--ultralytics-python``), never inside the daemon.

What a user would write: ``YOLO(model).predict(source="cams.streams", stream=True, ...)`` and a
paho publish per result, in the generator's loop. Two things are added around it, both
measurement only:

* ``cv2.VideoCapture`` is wrapped to note the wall time after each ``grab()`` (the same moment
  our reader stamps ``capture_ts``), so capture->receipt latency is measured the same way for
  both. The stamp is found again by the frame array's identity: ``LoadStreams`` hands the very
  array it read to the predictor and on to ``Results.orig_img``.
* A *file* source is paced at its native fps and loops at its end, exactly as our reader does,
  so a file behaves like a live camera for both (Ultralytics alone would decode a file as fast
  as it can and stop at its end). RTSP sources are left alone.

Per camera it also publishes ``stats`` (frames read, processed, dropped) once a second in the
layout of ours, so the subscriber counts drops the same way for both.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

_PURGE_AFTER_S = 10.0


class _Stamps:
    """Grab time per frame array (by ``id``), and frames read per capture.

    Captures are numbered in creation order, which is ``LoadStreams``' source order: two
    cameras may play the same file, so the source string cannot tell them apart.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[int, float] = {}
        self._last_purge = time.time()
        self.read: list[int] = []

    def register(self) -> int:
        with self._lock:
            self.read.append(0)
            return len(self.read) - 1

    def stamp(self, frame: object, ts: float, capture: int) -> None:
        with self._lock:
            self._by_id[id(frame)] = ts
            self.read[capture] += 1
            if ts - self._last_purge > _PURGE_AFTER_S:
                self._by_id = {k: v for k, v in self._by_id.items() if ts - v < _PURGE_AFTER_S}
                self._last_purge = ts

    def take(self, frame: object) -> float | None:
        with self._lock:
            return self._by_id.pop(id(frame), None)


STAMPS = _Stamps()
_BaseCapture: Any = cv2.VideoCapture


class StampedCapture(_BaseCapture):  # type: ignore[misc]
    """``cv2.VideoCapture`` that stamps frames at grab time and paces/loops files."""

    def __init__(self, source: Any, *args: Any) -> None:
        super().__init__(source, *args)
        self._index = STAMPS.register()
        self._file = Path(str(source)).is_file()
        fps = float(super().get(cv2.CAP_PROP_FPS)) if self._file else 0.0
        self._period = 1.0 / fps if 1.0 <= fps <= 240.0 else 1.0 / 25.0
        self._due = time.time()
        self._grab_ts = time.time()

    def get(self, prop: int) -> float:
        # A looping file is an endless camera: LoadStreams would stop at the frame count.
        if self._file and prop == cv2.CAP_PROP_FRAME_COUNT:
            return 0.0
        return float(super().get(prop))

    def grab(self) -> bool:
        ok = bool(super().grab())
        if self._file:
            if not ok:
                ok = bool(super().set(cv2.CAP_PROP_POS_FRAMES, 0)) and bool(super().grab())
            self._due = max(self._due + self._period, time.time() - 1.0)
            time.sleep(max(0.0, self._due - time.time()))
        self._grab_ts = time.time()
        return ok

    def retrieve(self, *args: Any) -> tuple[bool, Any]:
        ok, frame = super().retrieve(*args)
        if ok and frame is not None:
            STAMPS.stamp(frame, self._grab_ts, self._index)
        return bool(ok), frame

    def read(self, *args: Any) -> tuple[bool, Any]:
        if not self.grab():
            return False, None
        return self.retrieve(*args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, type=Path, help="Ultralytics .pt weights")
    parser.add_argument(
        "--sources", required=True, type=Path, help="a .streams file, one URL a line"
    )
    parser.add_argument("--camera-ids", required=True, help="comma-separated, in source order")
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--prefix", default="edgewatch")
    parser.add_argument("--node", default="ultralytics")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--iou", type=float, default=0.7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--half", action="store_true")
    args = parser.parse_args(argv)

    # Both LoadStreams and our wrapper see the wrapped class from here on.
    cv2.VideoCapture = StampedCapture  # type: ignore[misc,assignment]
    from ultralytics import YOLO

    camera_ids = args.camera_ids.split(",")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{args.node}-baseline")
    client.connect("127.0.0.1", args.mqtt_port)
    client.loop_start()
    processed = dict.fromkeys(camera_ids, 0)
    unstamped = 0
    started = time.monotonic()
    next_stats = started + 1.0
    model = YOLO(str(args.model))
    results = model.predict(
        source=str(args.sources), stream=True, imgsz=args.imgsz, conf=args.conf, iou=args.iou,
        device=args.device, half=args.half, verbose=False,
    )  # fmt: skip
    # The harness stops us with SIGTERM; finish the loop so the summary below gets printed.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("BASELINE-STARTED", flush=True)
    # The generator yields one Results per stream per batch, in source order.
    for index, result in enumerate(results):
        now = time.time()
        camera = camera_ids[index % len(camera_ids)]
        capture_ts = STAMPS.take(result.orig_img)
        if capture_ts is None:
            unstamped += 1
            capture_ts = now
        processed[camera] += 1
        payload = _detections_payload(result, camera, processed[camera], capture_ts, now)
        client.publish(
            f"{args.prefix}/{args.node}/{camera}/detections",
            json.dumps(payload, separators=(",", ":")),
            qos=1,
        )
        if time.monotonic() >= next_stats:
            next_stats += 1.0
            _publish_stats(client, args, camera_ids, processed)
        if stop.is_set() or time.monotonic() - started >= args.duration:
            break
    _publish_stats(client, args, camera_ids, processed)
    print(json.dumps({"unstamped_frames": unstamped, "processed": processed}), flush=True)
    client.loop_stop()
    client.disconnect()
    return 0


def _detections_payload(
    result: Any, camera: str, seq: int, capture_ts: float, now: float
) -> dict[str, object]:
    """Our ``detections`` payload layout, filled from one Ultralytics ``Results``."""
    boxes = result.boxes
    xyxy = boxes.xyxy.cpu().numpy()
    confs = boxes.conf.cpu().numpy()
    classes = boxes.cls.cpu().numpy().astype(int)
    names = result.names
    return {
        "schema_version": 1, "camera": camera, "seq": seq,
        "capture_ts": round(capture_ts, 6), "publish_ts": round(now, 6),
        "latency_ms": round((now - capture_ts) * 1000, 2),
        "frame": {"width": int(result.orig_shape[1]), "height": int(result.orig_shape[0])},
        "detections": [
            {"class_id": int(c), "name": names[int(c)], "confidence": round(float(s), 4),
             "box": [round(float(v), 1) for v in b]}
            for b, s, c in zip(xyxy, confs, classes, strict=True)
        ],
    }  # fmt: skip


def _publish_stats(
    client: mqtt.Client, args: argparse.Namespace, camera_ids: list[str],
    processed: dict[str, int],
) -> None:  # fmt: skip
    for index, camera in enumerate(camera_ids):
        read = STAMPS.read[index] if index < len(STAMPS.read) else 0
        payload = {
            "schema_version": 1, "camera": camera, "ts": round(time.time(), 6),
            "frames_read_total": read, "processed_total": processed[camera],
            "dropped_total": max(0, read - processed[camera]),
        }  # fmt: skip
        client.publish(f"{args.prefix}/{args.node}/{camera}/stats", json.dumps(payload), qos=1)


if __name__ == "__main__":
    sys.exit(main())
