"""The GStreamer pipeline of a camera read with a Jetson's hardware decoder.

JetPack's OpenCV is built with GStreamer; ``cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)``
runs a ``gst-launch`` description whose last element is an ``appsink``. The pipeline decodes
with ``nvv4l2decoder`` (NVDEC), converts out of NVMM memory with ``nvvidconv`` and hands
OpenCV BGR frames. Codec elements are explicit, not ``decodebin``: which decoder
``decodebin`` picks depends on plugin ranks, and a silent software decode on a Jetson is the
failure this route exists to avoid.

Credentials go into ``rtspsrc``'s ``user-id``/``user-pw`` properties, never into the logged
form of the pipeline. Standard library and stdlib-only config modules only: the reader
process imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from daemon.config.model import (
    JETSON_FILE_SUFFIXES,
    JETSON_STREAM_SCHEMES,
    VideoCodec,
)
from daemon.config.secrets import MASK, Secret, mask_url, split_userinfo

# rtspsrc's jitter buffer: the daemon wants the newest frame, so a short buffer (the
# element's default is 2000 ms) keeps detections close to real time on a LAN.
RTSP_LATENCY_MS: Final = 200
# Depayloader and parser of each codec.
_CODEC_ELEMENTS: Final = {
    VideoCodec.H264: ("rtph264depay", "h264parse"),
    VideoCodec.H265: ("rtph265depay", "h265parse"),
}
# NVDEC decodes into NVMM (device) memory; nvvidconv copies out as BGRx, which
# videoconvert turns into the BGR OpenCV expects.
_DECODE: Final = (
    "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR"
)
# A live stream keeps only its newest decoded frame; a file blocks its decoder until the
# reader, which paces files at their frame rate, takes the frame (no frame is skipped).
_STREAM_SINK: Final = "appsink drop=true max-buffers=1 sync=false"
_FILE_SINK: Final = "appsink drop=false max-buffers=1 sync=false"


@dataclass(frozen=True, slots=True)
class GstPipeline:
    """A ``gst-launch`` description for ``cv2.CAP_GSTREAMER``. ``launch`` may hold the
    camera's credentials; ``shown`` is the same pipeline with them masked, for logs."""

    launch: Secret
    shown: str


def quote(value: str) -> str:
    """``value`` as one double-quoted property value of ``gst_parse_launch``: a backslash or
    a double quote is escaped with a backslash, which the parser removes again."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def jetson_pipeline(url: str, codec: VideoCodec, read_timeout_s: float) -> GstPipeline:
    """The hardware-decoding pipeline of an ``rtsp(s)://`` camera or an MP4/QuickTime file.

    Raises ``ValueError`` for any other source (the config refuses them with ``decoder:
    jetson``)."""
    depay, parse = _CODEC_ELEMENTS[codec]
    lowered = url.lower()
    if lowered.startswith(JETSON_STREAM_SCHEMES):
        location, user, password = split_userinfo(url)
        # Over TCP like the FFmpeg route; tcp-timeout (µs) bounds each read like FFmpeg's.
        options = (
            f"protocols=tcp latency={RTSP_LATENCY_MS} tcp-timeout={int(read_timeout_s * 1_000_000)}"
        )
        tail = f"{depay} ! {parse} ! {_DECODE} ! {_STREAM_SINK}"

        def source(loc: str, auth: tuple[str, str] | None) -> str:
            login = f" user-id={quote(auth[0])} user-pw={quote(auth[1])}" if auth else ""
            return f"rtspsrc location={quote(loc)}{login} {options} ! {tail}"

        auth = (user, password) if user or password else None
        shown_auth = (MASK, MASK) if auth else None
        return GstPipeline(Secret(source(location, auth)), source(mask_url(location), shown_auth))
    if lowered.endswith(JETSON_FILE_SUFFIXES) and "://" not in url:
        text = f"filesrc location={quote(url)} ! qtdemux ! {parse} ! {_DECODE} ! {_FILE_SINK}"
        return GstPipeline(Secret(text), text)
    raise ValueError("the jetson decoder reads rtsp:// streams and MP4/QuickTime files only")
