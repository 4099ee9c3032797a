"""``PyRtspServer`` against a real client: our ``PacketSource`` (OpenCV's FFmpeg RTSP client
over TCP, as every NVDEC camera reads).

The packets received decode to exactly the file's frames (the same H.264 bitstream, so FU-A
fragments were put back together byte for byte); a stopped camera ends its stream and
refuses new sessions until it is started again; stopping the server ends every stream.
Over a raw socket: a request that does not parse gets 400 and the session goes on, and a
connection on a descriptor >= 1024 is served.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Final

import cv2
import numpy as np
import pytest

from daemon.capture.packets import Packet, PacketSource, PacketSourceError
from tests.harness.py_rtsp import PyRtspServer

TIMEOUT_S: Final = 2.0
PACKETS: Final = 30
# Room above descriptor 1023 for the server's and the client's sockets.
HIGH_FILES: Final = 2048
REPO: Final = Path(__file__).resolve().parents[2]


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


# Set in the process of its own that the descriptor test runs in.
ALONE: Final = "EDGEWATCH_TEST_FRESH_PROCESS"


@contextmanager
def high_descriptors() -> Iterator[None]:
    """Open files until the next descriptor the process gets is 1024 or more (raising the soft
    open-files limit, often 1024, while it lasts)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < HIGH_FILES:
        if hard != resource.RLIM_INFINITY and hard < HIGH_FILES:
            pytest.skip(f"this process may open only {hard} files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (HIGH_FILES, hard))
    try:
        with ExitStack() as files:
            while files.enter_context(open(os.devnull, "rb")).fileno() < 1024:
                pass
            yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _request(connection: socket.socket, request: bytes) -> tuple[str, dict[str, str]]:
    """Send ``request``; the reply's status line and headers (names lower-cased)."""
    connection.sendall(request)
    reply = b""
    while b"\r\n\r\n" not in reply:
        data = connection.recv(4096)
        assert data, f"the server closed the connection; got {reply!r}"
        reply += data
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    assert len(body) == int(headers.get("content-length", "0")), "one reply at a time"
    return status, headers


def _options(url: str, cseq: int) -> bytes:
    return f"OPTIONS {url} RTSP/1.0\r\nCSeq: {cseq}\r\n\r\n".encode()


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


@pytest.mark.parametrize(
    "garbage",
    [
        b"garbage\r\nCSeq: 7\r\n\r\n",
        b"OPTIONS rtsp://127.0.0.1/cam HTTP/1.1\r\nCSeq: 7\r\n\r\n",
        b"OPTIONS rtsp://127.0.0.1/cam RTSP/1.0\r\nCSeq: 7\r\nContent-Length: x\r\n\r\n",
    ],
    ids=["request-line", "version", "content-length"],
)
def test_bad_request_gets_400_and_the_session_goes_on(server: PyRtspServer, garbage: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S * 5) as client:
        status, headers = _request(client, garbage)
        assert status == "RTSP/1.0 400 Bad Request"
        assert headers["cseq"] == "7"
        status, headers = _request(client, _options(server.url("cam"), 8))
        assert status == "RTSP/1.0 200 OK"
        assert headers["cseq"] == "8"


def test_bad_request_without_cseq_gets_400_without_cseq(server: PyRtspServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S * 5) as client:
        status, headers = _request(client, b"garbage\r\n\r\n")
        assert status == "RTSP/1.0 400 Bad Request"
        assert "cseq" not in headers


def test_serves_a_connection_on_a_descriptor_above_1023(
    clip: Path, request: pytest.FixtureRequest
) -> None:
    """Run in a process of its own: in a long one, an earlier test's socket closed late (by
    the garbage collector or a lingering thread) frees a descriptor below 1024 again."""
    if not os.environ.get(ALONE):
        node = f"{Path(__file__).relative_to(REPO)}::{request.node.name}"
        fresh = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
            cwd=REPO, env={**os.environ, ALONE: "1"}, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        assert fresh.returncode == 0, fresh.stdout + fresh.stderr
        if "1 skipped" in fresh.stdout:  # too few files allowed (``high_descriptors``)
            pytest.skip(fresh.stdout.strip().splitlines()[-1])
        assert "1 passed" in fresh.stdout, fresh.stdout
        return
    with (
        high_descriptors(),
        PyRtspServer({"cam": clip}) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S * 5) as client,
    ):
        assert client.fileno() >= 1024
        status, headers = _request(client, _options(server.url("cam"), 1))
        assert status == "RTSP/1.0 200 OK"
        assert headers["public"].startswith("OPTIONS")
