"""``PacketSource``: a camera's encoded video packets, demuxed by OpenCV's FFmpeg backend.

The NVDEC reader decodes on the GPU and needs only the compressed stream. OpenCV demuxes it
in raw mode (``CAP_PROP_FORMAT`` -1: ``read`` returns a packet's bytes undecoded), which
gives what NVDEC needs from a file or a network stream alike: open and read timeouts
(OpenCV's interrupt callback), and the GIL released while a read waits. H.264 and H.265
packets come out in Annex B (start codes): OpenCV converts a container's length-prefixed
packets (MP4, MKV, FLV), and an RTSP stream's already are. A stream's SPS/PPS may be sent
only out of band (in the SDP, which FFmpeg keeps as the codec's extradata): the first
packet handed out is a keyframe, with that extradata in front when it is in Annex B.

OpenCV, numpy and the standard library only: no CUDA, so it runs and is tested anywhere.
"""

from __future__ import annotations

import os
import time
from enum import Enum
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from daemon.capture.protocol import SourceKind

# Read by OpenCV's FFmpeg backend at each open, for the whole process.
_OPTIONS_VARIABLE: Final = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_START_CODE: Final = b"\x00\x00\x01"
# Cameras send a keyframe every few seconds even with long GOPs: a source that has sent
# none for this long after its open cannot be decoded, and is reported rather than waited on.
KEYFRAME_WAIT_S: Final = 30.0

Packet = npt.NDArray[np.uint8]


class VideoCodec(str, Enum):
    """The codecs whose packets a ``PacketSource`` hands out (named as PyNvVideoCodec's
    ``cudaVideoCodec`` names them)."""

    H264 = "H264"
    HEVC = "HEVC"


# OpenCV's CAP_PROP_FOURCC: the container's codec tag, else FFmpeg's codec name.
_CODECS: Final = {
    "h264": VideoCodec.H264,
    "avc1": VideoCodec.H264,
    "avc3": VideoCodec.H264,
    "hevc": VideoCodec.HEVC,
    "hvc1": VideoCodec.HEVC,
    "hev1": VideoCodec.HEVC,
    "h265": VideoCodec.HEVC,
}


class PacketSourceError(Exception):
    """A source that cannot be demuxed into packets; the message says why."""


def ffmpeg_capture_options(read_timeout_s: float) -> str:
    """``OPENCV_FFMPEG_CAPTURE_OPTIONS`` for a network stream: RTSP over TCP (UDP is lost
    behind NAT and firewalls), every socket operation bounded by the read timeout."""
    # ``timeout`` is in microseconds; ``stimeout`` is silently ignored by current FFmpeg.
    return f"rtsp_transport;tcp|timeout;{int(read_timeout_s * 1_000_000)}"


def timeout_params(open_timeout_s: float, read_timeout_s: float, read_attempts: int) -> list[int]:
    """OpenCV's open timeout and per-attempt read timeout, as ``VideoCapture`` parameters;
    a read is retried ``read_attempts`` times before it fails."""
    return [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        int(open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        max(1, int(read_timeout_s * 1000 / read_attempts)),
    ]


def codec_of(fourcc: int) -> VideoCodec | None:
    """The codec OpenCV reports as ``CAP_PROP_FOURCC``; None when not one we hand out."""
    name = fourcc.to_bytes(4, "little").decode("latin-1").lower()
    return _CODECS.get(name)


class PacketSource:
    """An open source: its codec, frame rate and Annex-B packets. Not thread-safe: one
    reader thread uses it."""

    def __init__(
        self,
        url: str,
        *,
        open_timeout_s: float,
        read_timeout_s: float,
        keyframe_wait_s: float = KEYFRAME_WAIT_S,
    ) -> None:
        """Open ``url`` (a file or a network stream; raises ``PacketSourceError``). Each
        ``read`` waits at most about ``read_timeout_s``; the first keyframe must come
        within ``keyframe_wait_s`` of the open."""
        kind = SourceKind.of(url)
        if kind is SourceKind.DEVICE:
            # V4L2 devices are opened by OpenCV's V4L2 backend, which has no raw mode.
            raise PacketSourceError(f"cannot read encoded packets from a device: {url}")
        if kind is SourceKind.STREAM:
            options = ffmpeg_capture_options(read_timeout_s)
            # Only on change: every NVDEC camera of a process has the same read timeout.
            if os.environ.get(_OPTIONS_VARIABLE) != options:
                os.environ[_OPTIONS_VARIABLE] = options
        # A raw read returns after one packet: no decoder retries inside it.
        params = [cv2.CAP_PROP_FORMAT, -1, *timeout_params(open_timeout_s, read_timeout_s, 1)]
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise PacketSourceError(f"cannot open {url}")
        if cap.get(cv2.CAP_PROP_FORMAT) != -1:
            cap.release()
            raise PacketSourceError(f"OpenCV cannot read encoded packets from {url}")
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        codec = codec_of(fourcc)
        if codec is None:
            cap.release()
            shown = fourcc.to_bytes(4, "little").decode("latin-1").strip("\x00") or "unknown"
            supported = ", ".join(c.value for c in VideoCodec)
            raise PacketSourceError(f"codec {shown!r} is not decoded by nvdec ({supported})")
        self._cap = cap
        self.codec = codec
        self.fps = float(cap.get(cv2.CAP_PROP_FPS))
        self._extradata_index = int(cap.get(cv2.CAP_PROP_CODEC_EXTRADATA_INDEX))
        self._keyframe_seen = False
        self._keyframe_wait_s = keyframe_wait_s
        self._keyframe_due = time.monotonic() + keyframe_wait_s

    def read(self) -> Packet | None:
        """The next packet (1-D uint8, Annex B); empty while waiting for the first keyframe
        (nothing before it can be decoded); None at the end of a file, a read timeout or a
        broken stream. Raises ``PacketSourceError`` when no keyframe came in time."""
        ok, packet = self._cap.read()
        if not ok or packet is None:
            return None
        if self._keyframe_seen:
            return np.ascontiguousarray(packet.reshape(-1))
        if not self._cap.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME):
            if time.monotonic() >= self._keyframe_due:
                raise PacketSourceError(f"no keyframe in {self._keyframe_wait_s:g} s")
            return np.empty(0, np.uint8)
        self._keyframe_seen = True
        return np.concatenate([self._parameter_sets(), packet.reshape(-1)])

    def _parameter_sets(self) -> Packet:
        """The codec's extradata when in Annex B (a stream's out-of-band SPS/PPS), else none:
        the converted packets of a container carry their parameter sets in band."""
        ok, extradata = self._cap.retrieve(flag=self._extradata_index)
        if not ok or extradata is None:
            return np.empty(0, np.uint8)
        data: Packet = extradata.reshape(-1).astype(np.uint8, copy=False)
        head = data[:4].tobytes()
        return data if head.startswith(_START_CODE) or head == b"\x00" + _START_CODE else data[:0]

    def close(self) -> None:
        """Release the source. Idempotent."""
        self._cap.release()
