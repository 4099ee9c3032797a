"""``decoder: jetson`` on a machine without a Jetson: the daemon's fallback, and the pipeline.

The PyPI OpenCV used here and in CI is built without GStreamer, so a camera asking for the
Jetson's hardware decoder must still stream, read by FFmpeg, and say so: one WARNING per
reader start, naming the reason and the pipeline with its credentials masked. One camera is
the real RTSP server behind basic authentication, one a video file from the shared folder;
detections come through the real model and mosquitto.

The pipeline the daemon builds then plays the same two sources in Debian's GStreamer, with
NVIDIA's decoder and converter replaced by ``decodebin`` (which plugs this machine's software
decoder once the stream's profile is known) and ``videoconvert``:
``rtspsrc`` logs in with the ``user-id``/``user-pw`` it was given and ``appsink`` hands out BGR
frames of the source's size.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import cv2
import pytest

from daemon.capture.gstreamer import jetson_pipeline
from daemon.config.model import VideoCodec
from tests.fixtures.broker import Subscriber
from tests.fixtures.observe import payloads
from tests.fixtures.rtsp import RTSP_SECRET, leak_forms
from tests.harness.daemon import DaemonProcess
from tests.harness.gst_launch import run_probe
from tests.harness.rtsp import RtspServer

pytestmark = [pytest.mark.rtsp, pytest.mark.mqtt]

PREFIX: Final = "jetson"
FALLBACK: Final = "jetson decoder unavailable, reading with FFmpeg"
# Plays the pipeline on stdin; prints [format, width, height] of its first frames, or the
# first error GStreamer reported.
_PLAY: Final = """
import json, sys, time
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
pipeline = Gst.parse_launch(sys.stdin.read())
ok, sink = pipeline.iterate_sinks().next()
bus = pipeline.get_bus()
pipeline.set_state(Gst.State.PLAYING)
frames, error, deadline = [], None, time.monotonic() + 30
while len(frames) < 5 and error is None and time.monotonic() < deadline:
    message = bus.pop_filtered(Gst.MessageType.ERROR)
    if message is not None:
        error = message.parse_error()[0].message
        break
    sample = sink.emit("try-pull-sample", Gst.SECOND // 2)
    if sample is not None:
        caps = sample.get_caps().get_structure(0)
        frames.append([caps.get_value(k) for k in ("format", "width", "height")])
pipeline.set_state(Gst.State.NULL)
print(json.dumps({"frames": frames, "error": error}))
"""
# NVIDIA's element -> what does its job on this machine.
_STAND_INS: Final = {"nvv4l2decoder": "decodebin", "nvvidconv": "videoconvert"}


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
    for form in leak_forms(RTSP_SECRET):
        assert form not in log


def _play(launch: str) -> dict[str, Any]:
    played: dict[str, Any] = json.loads(run_probe(_PLAY, launch, _STAND_INS, 90))
    return played


def _size(video: Path) -> list[int]:
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    ok, frame = cap.read()
    cap.release()
    assert ok
    return [int(frame.shape[1]), int(frame.shape[0])]


def test_pipeline_plays_with_software_stand_ins(
    secure_rtsp: RtspServer, videos: list[Path]
) -> None:
    clip = next(v for v in videos if "360p" in v.name)
    expected = [["BGR", *_size(clip)]] * 5
    rtsp = jetson_pipeline(secure_rtsp.url("cam"), VideoCodec.H264, 5.0)
    assert _play(rtsp.launch.reveal()) == {"frames": expected, "error": None}
    stream_file = jetson_pipeline(str(clip), VideoCodec.H264, 5.0)
    assert _play(stream_file.launch.reveal()) == {"frames": expected, "error": None}
    # The login is what let rtspsrc in: the same pipeline with a wrong password is refused.
    wrong = secure_rtsp.url("cam").replace(quote(RTSP_SECRET, safe=""), "wrong-password")
    refused = _play(jetson_pipeline(wrong, VideoCodec.H264, 5.0).launch.reveal())
    assert refused["frames"] == []
    assert refused["error"]
