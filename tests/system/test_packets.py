"""``PacketSource``: a camera's encoded packets, demuxed by OpenCV, as NVDEC is fed them.

Against real sources (the shared videos, an HEVC copy made by ffmpeg, the real RTSP
server): packets come out in Annex B, the first one starts with the parameter sets and a
keyframe, and the packets written one after another form an elementary stream that FFmpeg
decodes into as many frames as the source has. A source that stops sending, or a server
that never answers, ends a read or an open within the configured timeouts (the test only
checks that they return: the bound below is a hang guard, not a speed requirement).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import cv2
import pytest

from daemon.capture.packets import Packet, PacketSource, PacketSourceError, VideoCodec
from tests.harness.rtsp import RtspServer

TIMEOUT_S: Final = 2.0
# Generous: a hang guard only.
HANG_GUARD_S: Final = 120


def _h264_type(header: int) -> int:
    return header & 0x1F


def _hevc_type(header: int) -> int:
    return (header >> 1) & 0x3F


# Per codec: NAL unit type of a NAL header byte; parameter sets; keyframe (IDR, CRA) types.
_NAL: Final[dict[VideoCodec, tuple[Callable[[int], int], set[int], set[int]]]] = {
    VideoCodec.H264: (_h264_type, {7, 8}, {5}),
    VideoCodec.HEVC: (_hevc_type, {32, 33, 34}, {19, 20, 21}),
}
# What FFmpeg's raw demuxers take the dumped elementary stream for.
_SUFFIX: Final = {VideoCodec.H264: ".h264", VideoCodec.HEVC: ".hevc"}


def _nal_types(packet: Packet, codec: VideoCodec) -> list[int]:
    """The types of the NAL units of an Annex-B packet, in order."""
    data = packet.tobytes()
    kind = _NAL[codec][0]
    types, start = [], data.find(b"\x00\x00\x01")
    while start != -1:
        types.append(kind(data[start + 3]))
        start = data.find(b"\x00\x00\x01", start + 3)
    return types


def _frames_decoded(path: Path) -> int:
    """How many frames FFmpeg (through OpenCV) decodes from a file."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert cap.isOpened(), path
    count = 0
    while cap.grab():
        count += 1
    cap.release()
    return count


def _check_packets(packets: list[Packet], codec: VideoCodec) -> None:
    """Annex B throughout; the first packet: parameter sets, then a keyframe."""
    _, parameter_sets, keyframes = _NAL[codec]
    assert packets
    for packet in packets:
        assert packet.ndim == 1
        head = packet[:4].tobytes()
        assert head.startswith(b"\x00\x00\x01") or head == b"\x00\x00\x00\x01", head
    first = _nal_types(packets[0], codec)
    key_at = next(i for i, t in enumerate(first) if t in keyframes)
    assert parameter_sets <= set(first[:key_at]), first


def _dump(packets: list[Packet], codec: VideoCodec, folder: Path) -> Path:
    path = folder / f"packets{_SUFFIX[codec]}"
    with path.open("wb") as out:
        for packet in packets:
            out.write(packet.tobytes())
    return path


@pytest.fixture(autouse=True)
def _ffmpeg_options_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream's ``PacketSource`` sets OpenCV's FFmpeg options in the process environment."""
    variable = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
    monkeypatch.setenv(variable, os.environ.get(variable, ""))


@pytest.fixture(scope="module")
def hevc_clip(videos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seconds of a shared clip re-encoded to HEVC in MP4 (``hvc1``)."""
    clip = next(v for v in videos if "360p" in v.name)
    out = tmp_path_factory.mktemp("hevc") / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-t", "2", "-i", str(clip),
         "-an", "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
         "-tag:v", "hvc1", str(out)],
        check=True, timeout=120,
    )  # fmt: skip
    return out


@pytest.fixture
def free_rtsp(rtsp_server: RtspServer) -> Iterator[RtspServer]:
    """The session's server; a camera a test stopped is started again."""
    yield rtsp_server
    for path in rtsp_server.paths:
        rtsp_server.start_source(path)


def _open(url: str) -> PacketSource:
    return PacketSource(url, open_timeout_s=TIMEOUT_S * 5, read_timeout_s=TIMEOUT_S)


def _open_served(url: str) -> PacketSource:
    """Open a camera of the RTSP server; a feed just (re)started is not served at once."""
    deadline = time.monotonic() + HANG_GUARD_S / 2
    while True:
        try:
            return _open(url)
        except PacketSourceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _read_all(source: PacketSource) -> list[Packet]:
    packets = []
    while (packet := source.read()) is not None:
        assert packet.size, "a file starts at a keyframe: no packet is skipped"
        packets.append(packet)
    return packets


@pytest.mark.parametrize("kind", ["h264", "hevc"])
def test_file_packets_decode_to_the_files_frames(
    kind: str, videos: list[Path], hevc_clip: Path, tmp_path: Path
) -> None:
    clip = hevc_clip if kind == "hevc" else next(v for v in videos if "360p" in v.name)
    source = _open(str(clip))
    try:
        codec = source.codec
        assert source.fps > 0
        packets = _read_all(source)
    finally:
        source.close()
    assert codec is (VideoCodec.HEVC if kind == "hevc" else VideoCodec.H264)
    _check_packets(packets, codec)
    assert _frames_decoded(_dump(packets, codec, tmp_path)) == _frames_decoded(clip)


def test_a_source_without_a_keyframe_is_reported(videos: list[Path], tmp_path: Path) -> None:
    """An H.264 stream of parameter sets and predicted frames only (a clip's first GOP
    without its IDR): its packets are held back, and once the keyframe wait is over the
    source says why instead of waiting for ever."""
    clip = next(v for v in videos if "360p" in v.name)
    source = _open(str(clip))
    try:
        packets = _read_all(source)
    finally:
        source.close()
    first = packets[0].tobytes()
    idr_at = _nal_types(packets[0], VideoCodec.H264).index(5)
    starts = [i for i in range(len(first) - 3) if first[i : i + 3] == b"\x00\x00\x01"]
    parameter_sets = first[: starts[idr_at]]
    gop = next(i for i, p in enumerate(packets[1:], 1) if 5 in _nal_types(p, VideoCodec.H264))
    stream = tmp_path / "no_keyframe.h264"
    stream.write_bytes(parameter_sets + b"".join(p.tobytes() for p in packets[1:gop]))

    patient = PacketSource(str(stream), open_timeout_s=10.0, read_timeout_s=TIMEOUT_S)
    held = []
    try:
        while (packet := patient.read()) is not None:
            held.append(packet)
    finally:
        patient.close()
    assert held
    assert not any(p.size for p in held)
    impatient = PacketSource(
        str(stream), open_timeout_s=10.0, read_timeout_s=TIMEOUT_S, keyframe_wait_s=0.0
    )
    try:
        with pytest.raises(PacketSourceError, match="no keyframe"):
            impatient.read()
    finally:
        impatient.close()


def test_stream_packets_decode_frame_for_packet(free_rtsp: RtspServer, tmp_path: Path) -> None:
    source = _open_served(free_rtsp.url("cam0"))
    packets: list[Packet] = []
    try:
        assert source.codec is VideoCodec.H264
        while len(packets) < 60:
            packet = source.read()
            assert packet is not None, "the stream stopped"
            # Empty while the stream has not reached its first keyframe.
            if packet.size:
                packets.append(packet)
    finally:
        source.close()
    _check_packets(packets, VideoCodec.H264)
    # One packet per frame on a stream; all decodable from the first on.
    assert _frames_decoded(_dump(packets, VideoCodec.H264, tmp_path)) == len(packets)


@pytest.mark.timeout(HANG_GUARD_S)
def test_read_of_a_stopped_stream_returns(free_rtsp: RtspServer) -> None:
    source = _open_served(free_rtsp.url("cam1"))
    try:
        assert source.read() is not None
        free_rtsp.stop_source("cam1")
        # What was already received may still come out; then a read times out.
        while source.read() is not None:
            pass
    finally:
        source.close()


@pytest.mark.timeout(HANG_GUARD_S)
def test_open_of_a_server_that_never_answers_returns() -> None:
    with socket.socket() as silent:
        # Accepts connections (the kernel does) and never says a word.
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(PacketSourceError, match="cannot open"):
            _open(f"rtsp://127.0.0.1:{port}/cam")


def test_open_of_a_closed_port_fails_with_the_reason() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PacketSourceError, match=f"cannot open rtsp://127.0.0.1:{port}/cam"):
        _open(f"rtsp://127.0.0.1:{port}/cam")


def test_codec_nvdec_does_not_decode_is_refused(videos: list[Path], tmp_path: Path) -> None:
    clip = next(v for v in videos if "360p" in v.name)
    mpeg4 = tmp_path / "clip.avi"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-t", "1", "-i", str(clip),
         "-an", "-c:v", "mpeg4", str(mpeg4)],
        check=True, timeout=60,
    )  # fmt: skip
    with pytest.raises(PacketSourceError, match=r"codec 'FMP4' is not decoded by nvdec \(H264"):
        _open(str(mpeg4))


def test_devices_are_refused() -> None:
    with pytest.raises(PacketSourceError, match="cannot read encoded packets from a device"):
        _open("/dev/video0")
