"""``decoder: jetson`` through the whole daemon on a machine whose OpenCV has no GStreamer.

The PyPI OpenCV used here and in CI is built without GStreamer, so a camera asking for the
Jetson's hardware decoder must still stream, read by FFmpeg, and say so: one WARNING per
reader start, naming the reason and the pipeline with its credentials masked. One camera is
the real RTSP server behind basic authentication, one a video file from the shared folder;
detections come through the real model and mosquitto.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import cv2
import pytest

from tests.fixtures.broker import Subscriber
from tests.fixtures.observe import payloads
from tests.harness.daemon import DaemonProcess
from tests.harness.rtsp import RtspServer, missing_tools

pytestmark = [pytest.mark.rtsp, pytest.mark.mqtt]

PREFIX: Final = "jetson"
RTSP_USER: Final = "viewer"
RTSP_SECRET: Final = "Gst-S3cret:pw@5"
FALLBACK: Final = "jetson decoder unavailable, reading with FFmpeg"


@pytest.fixture
def secure_rtsp(videos: list[Path]) -> Iterator[RtspServer]:
    missing = missing_tools()
    if missing:
        pytest.skip(f"RTSP server unavailable, missing: {', '.join(missing)}")
    clip = next(v for v in videos if "360p" in v.name)
    with RtspServer({"cam": clip}, user=RTSP_USER, password=RTSP_SECRET) as server:
        yield server


def test_jetson_cameras_fall_back_to_ffmpeg_and_stream(
    *,
    secure_rtsp: RtspServer,
    videos: list[Path],
    daemon_document: Callable[..., dict[str, Any]],
    run_daemon: Callable[..., DaemonProcess],
    mqtt_subscriber: Callable[..., Subscriber],
) -> None:
    if cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        pytest.skip("this OpenCV has GStreamer: the pipeline itself would be tried")
    clip = next(v for v in videos if "360p" in v.name)
    cameras = {
        "rtsp": {"url": secure_rtsp.url("cam"), "decoder": "jetson"},
        "file": {"url": str(clip), "decoder": "jetson", "codec": "h264"},
    }
    sub = mqtt_subscriber((f"{PREFIX}/#",))
    daemon = run_daemon(daemon_document(cameras, PREFIX), log_level="debug")
    daemon.wait_streaming(list(cameras))
    sub.wait_for(lambda _: all(len(payloads(sub, "detections", c)) >= 3 for c in cameras), 60)
    assert daemon.stop() == 0

    records = daemon.log_records()
    starts = Counter(r["camera"] for r in records if r.get("msg") == "reader started")
    warnings = [r for r in records if r.get("msg") == FALLBACK]
    assert set(starts) == set(cameras)
    # Exactly one warning per reader process the daemon started (normally one per camera).
    assert Counter(r["camera"] for r in warnings) == starts
    for record in warnings:
        assert record["level"] == "warning"
        assert record["reason"] == "this OpenCV build has no GStreamer backend"
    pipelines = {r["camera"]: r["pipeline"] for r in warnings}
    assert pipelines["rtsp"].startswith(
        f'rtspsrc location="rtsp://127.0.0.1:{secure_rtsp.port}/cam" user-id="***" user-pw="***" '
    )
    assert " ! nvv4l2decoder ! " in pipelines["rtsp"]
    assert pipelines["file"].startswith(f'filesrc location="{clip}" ! qtdemux ! h264parse ! ')
    log = daemon.log_text()
    for form in (RTSP_SECRET, quote(RTSP_SECRET, safe="")):
        assert form not in log
