"""``PyRtspServer`` against a real client: our ``PacketSource`` (OpenCV's FFmpeg RTSP client
over TCP, as every NVDEC camera reads).

The packets received decode to exactly the file's frames (the same H.264 bitstream, so FU-A
fragments were put back together byte for byte); a stopped camera ends its stream and
refuses new sessions until it is started again; stopping the server ends every stream.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import cv2
import numpy as np
import pytest

from daemon.capture.packets import Packet, PacketSource, PacketSourceError
from tests.harness.py_rtsp import PyRtspServer

TIMEOUT_S: Final = 2.0
PACKETS: Final = 30


@pytest.fixture(autouse=True)
def _ffmpeg_options_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream's ``PacketSource`` sets OpenCV's FFmpeg options in the process environment."""
    variable = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
    monkeypatch.setenv(variable, os.environ.get(variable, ""))


@pytest.fixture
def clip(videos: list[Path]) -> Path:
    # B-frames and NAL units larger than one RTP packet: both paths of the packetizer.
    return next(v for v in videos if v.name == "mall_entrance_cctv_360p.mp4")


@pytest.fixture
def server(clip: Path) -> Iterator[PyRtspServer]:
    with PyRtspServer({"cam": clip}) as server:
        yield server


def _open(url: str) -> PacketSource:
    return PacketSource(url, open_timeout_s=TIMEOUT_S * 5, read_timeout_s=TIMEOUT_S)


def _decoded(path: Path, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` frames of ``path`` as OpenCV decodes them."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert cap.isOpened(), path
    frames: list[np.ndarray] = []
    while len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def _read_until_end(source: PacketSource) -> None:
    """Read what was already received; returns once a read says the stream is over."""
    while source.read() is not None:
        pass


def test_streamed_packets_decode_to_the_files_frames(
    server: PyRtspServer, clip: Path, tmp_path: Path
) -> None:
    source = _open(server.url("cam"))
    packets: list[Packet] = []
    try:
        while len(packets) < PACKETS:
            packet = source.read()
            assert packet is not None, "the stream stopped"
            assert packet.size, "each session starts at the file's first frame, a keyframe"
            packets.append(packet)
    finally:
        source.close()
    stream = tmp_path / "received.h264"
    stream.write_bytes(b"".join(p.tobytes() for p in packets))
    got = _decoded(stream, PACKETS + 1)
    assert len(got) == PACKETS
    # Compared in display order, up to well before the cut (B-frames near it may come out
    # ahead of the P-frame they precede, which the cut left out).
    half = PACKETS // 2
    for i, (g, e) in enumerate(zip(got[:half], _decoded(clip, half), strict=True)):
        assert np.array_equal(g, e), f"frame {i} differs"


def test_stopped_source_ends_its_stream_and_refuses_sessions_until_started(
    server: PyRtspServer,
) -> None:
    url = server.url("cam")
    source = _open(url)
    try:
        assert source.read() is not None
        server.stop_source("cam")
        _read_until_end(source)
    finally:
        source.close()
    with pytest.raises(PacketSourceError, match="cannot open"):
        _open(url)
    server.start_source("cam")
    again = _open(url)
    try:
        packet = again.read()
    finally:
        again.close()
    assert packet is not None
    assert packet.size


def test_stop_ends_every_stream(server: PyRtspServer) -> None:
    url = server.url("cam")
    source = _open(url)
    try:
        assert source.read() is not None
        server.stop()
        _read_until_end(source)
    finally:
        source.close()
    with pytest.raises(PacketSourceError, match="cannot open"):
        _open(url)
