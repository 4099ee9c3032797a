"""``decoder: nvdec`` where NVDEC cannot serve the camera: the daemon's fallback.

NVDEC frames are decoded into CUDA memory for a backend that takes batches there (the torch
backend on a CUDA GPU). With the default CPU backend, cameras asking for NVDEC must still
stream, read by OpenCV's FFmpeg, and say so: one WARNING per camera naming the reason. The
cameras are video files from the shared folder; detections come
through the real model and mosquitto. The NVDEC reader itself runs on a GPU machine
(``tests/system/test_nvdec_gpu.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest

from tests.fixtures.broker import Subscriber
from tests.fixtures.observe import payloads
from tests.harness.daemon import DaemonProcess

pytestmark = pytest.mark.mqtt

PREFIX: Final = "nvdec"
FALLBACK: Final = "nvdec decoder unavailable, reading with FFmpeg"


def test_nvdec_cameras_fall_back_to_ffmpeg_and_stream(
    *,
    videos: list[Path],
    daemon_document: Callable[..., dict[str, Any]],
    run_daemon: Callable[..., DaemonProcess],
    mqtt_subscriber: Callable[..., Subscriber],
) -> None:
    clips = [v for v in videos if "360p" in v.name]
    cameras = {
        "first": {"url": str(clips[0]), "decoder": "nvdec"},
        "second": {"url": str(clips[1]), "decoder": "nvdec"},
        "plain": {"url": str(clips[0])},
    }
    sub = mqtt_subscriber((f"{PREFIX}/#",))
    daemon = run_daemon(daemon_document(cameras, PREFIX), log_level="debug")
    daemon.wait_streaming(list(cameras))
    sub.wait_for(lambda _: all(len(payloads(sub, "detections", c)) >= 3 for c in cameras), 60)
    assert daemon.stop() == 0

    records = daemon.log_records()
    warnings = [r for r in records if r.get("msg") == FALLBACK]
    # Once per NVDEC camera, none for the camera that asked for FFmpeg.
    assert Counter(r["camera"] for r in warnings) == {"first": 1, "second": 1}
    for record in warnings:
        assert record["level"] == "warning"
        assert record["reason"] == (
            "the onnxruntime:CPUExecutionProvider backend takes no frames in GPU memory "
            "(nvdec needs backend: torch on a CUDA GPU)"
        )
    # Read by reader processes like any OpenCV camera.
    starts = Counter(r["camera"] for r in records if r.get("msg") == "reader started")
    assert set(starts) == set(cameras)
