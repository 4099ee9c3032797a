"""The jetson decoder's GStreamer pipeline, read back by GStreamer's own launch parser.

Debian's GStreamer (the one the test RTSP server runs on) parses each pipeline the daemon
builds, and the test reads the elements and their properties from the parsed pipeline: what
``rtspsrc`` and ``filesrc`` receive is what GStreamer made of the quoting, not what the
builder meant. NVIDIA's two elements exist only on a Jetson, so they are parsed as their
software counterparts (the decoder of the codec, ``videoconvert``); every other element is
the real one.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest

from daemon.capture.gstreamer import jetson_pipeline
from daemon.config.model import VideoCodec
from tests.harness.gst_launch import run_probe
from tests.harness.rtsp import SYSTEM_PYTHON

# Prints [[factory, {property: value}], ...] of the pipeline on stdin, in link order.
_PARSE: Final = """
import json, sys
import gi
gi.require_version("Gst", "1.0")
from gi.repository import GObject, Gst
Gst.init(None)
pipeline = Gst.parse_launch(sys.stdin.read())
found = []
it = pipeline.iterate_sorted()
names = ("location", "user-id", "user-pw", "protocols", "latency", "tcp-timeout", "drop",
         "max-buffers", "sync", "caps")
while True:
    ok, element = it.next()
    if ok != Gst.IteratorResult.OK:
        break
    props = {}
    for name in names:
        if element.find_property(name) is not None:
            value = element.get_property(name)
            if isinstance(value, GObject.GFlags):
                value = list(value.value_nicks)
            elif isinstance(value, Gst.Caps):
                value = value.to_string()
            props[name] = value
    found.append([element.get_factory().get_name(), props])
print(json.dumps(found[::-1]))
"""
# NVIDIA's element -> a software element of this machine that does the same job.
_STAND_INS: Final = {
    "nvv4l2decoder": {VideoCodec.H264: "openh264dec", VideoCodec.H265: "libde265dec"},
    "nvvidconv": {VideoCodec.H264: "videoconvert", VideoCodec.H265: "videoconvert"},
}


def _tail(codec: VideoCodec) -> list[str]:
    """The elements after the parser: decoder, converter, caps, converter, caps, sink."""
    decoder = _STAND_INS["nvv4l2decoder"][codec]
    return [decoder, "videoconvert", "capsfilter", "videoconvert", "capsfilter", "appsink"]


def _parsed(launch: str, codec: VideoCodec = VideoCodec.H264) -> list[tuple[str, dict[str, Any]]]:
    """The elements GStreamer builds from ``launch``, source first, with their properties."""
    probe = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import gi; gi.require_version('Gst', '1.0')"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("Debian's python3-gi with GStreamer is not installed")
    stand_ins = {element: per_codec[codec] for element, per_codec in _STAND_INS.items()}
    found = json.loads(run_probe(_PARSE, launch, stand_ins, 60))
    return [(name, props) for name, props in found]


def test_rtsp_credentials_become_properties_and_never_show() -> None:
    user, password = 'op"er\\a@tor', 'p"w\\x y@#/'
    url = "rtsp://op%22er%5Ca%40tor:p%22w%5Cx%20y%40%23%2F@127.0.0.1:8554/cam0?token=Tk-998877&x=1"
    pipeline = jetson_pipeline(url, VideoCodec.H264, 2.5)
    elements = _parsed(pipeline.launch.reveal())
    assert [name for name, _ in elements] == [
        "rtspsrc",
        "rtph264depay",
        "h264parse",
        *_tail(VideoCodec.H264),
    ]
    source = elements[0][1]
    assert source["location"] == "rtsp://127.0.0.1:8554/cam0?token=Tk-998877&x=1"
    assert (source["user-id"], source["user-pw"]) == (user, password)
    assert source["latency"] == 200
    assert source["tcp-timeout"] == 2_500_000
    assert "tcp" in source["protocols"]
    assert not [p for p in source["protocols"] if "udp" in p]
    assert elements[-2][1]["caps"] == "video/x-raw, format=(string)BGR"
    assert elements[-1][1]["drop"] is True
    assert elements[-1][1]["max-buffers"] == 1

    shown = pipeline.shown
    for secret in (user, password, "op%22er%5Ca%40tor", "p%22w%5Cx%20y%40%23%2F", "Tk-998877"):
        assert secret not in shown, secret
    shown_source = _parsed(shown)[0][1]
    assert (shown_source["user-id"], shown_source["user-pw"]) == ("***", "***")
    assert shown_source["location"] == "rtsp://127.0.0.1:8554/cam0?token=***&x=1"


def test_rtsp_without_credentials_has_no_login_properties() -> None:
    pipeline = jetson_pipeline("rtsps://cam.example:322/live", VideoCodec.H264, 5.0)
    assert pipeline.shown == pipeline.launch.reveal()
    source = _parsed(pipeline.launch.reveal())[0][1]
    assert source["location"] == "rtsps://cam.example:322/live"
    assert source["user-id"] is None
    assert source["user-pw"] is None


def test_h265_uses_its_depayloader_and_parser() -> None:
    pipeline = jetson_pipeline("rtsp://10.0.0.5/h265", VideoCodec.H265, 5.0)
    names = [name for name, _ in _parsed(pipeline.launch.reveal(), VideoCodec.H265)]
    assert names == ["rtspsrc", "rtph265depay", "h265parse", *_tail(VideoCodec.H265)]


@pytest.mark.parametrize("codec", list(VideoCodec))
def test_file_path_with_spaces_and_quotes(codec: VideoCodec, tmp_path: Path) -> None:
    path = str(tmp_path / 'my "site" clips' / "gate\\north cam ! 1.mp4")
    pipeline = jetson_pipeline(path, codec, 5.0)
    elements = _parsed(pipeline.launch.reveal(), codec)
    parser = "h264parse" if codec is VideoCodec.H264 else "h265parse"
    assert [name for name, _ in elements] == ["filesrc", "qtdemux", parser, *_tail(codec)]
    assert elements[0][1]["location"] == path
    # A file waits for the reader (which paces it) instead of dropping frames.
    assert elements[-1][1]["drop"] is False


@pytest.mark.parametrize(
    "url", ["/dev/video0", "http://10.0.0.5/mjpg", "/data/clip.avi", "rtmp://10.0.0.5/a.mp4"]
)
def test_sources_without_a_jetson_pipeline_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="rtsp:// streams and MP4/QuickTime files only"):
        jetson_pipeline(url, VideoCodec.H264, 5.0)
