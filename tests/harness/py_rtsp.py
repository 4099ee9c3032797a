"""A minimal RTSP server in pure Python, for machines without GStreamer or ffmpeg.

``PyRtspServer`` serves H.264 video files at ``rtsp://127.0.0.1:PORT/<name>`` with the
interface of ``RtspServer`` that camera tests use (``url``, ``stop_source``,
``start_source``, ``stop``, a context manager). The GPU machine has OpenCV with FFmpeg but
neither GStreamer nor an ffmpeg binary, so the NVDEC reader meets a live RTSP stream there
only through this server.

Only what FFmpeg's RTSP client needs is spoken: RTSP 1.0 (RFC 2326) with RTP interleaved
in the TCP connection (§10.12; our readers always ask for TCP), H.264 packetized per
RFC 6184 (single NAL unit packets and FU-A fragments), no RTCP and no authentication. The
NAL units come from the file through ``PacketSource``, which demuxes in OpenCV's raw mode
exactly as the NVDEC reader does, so no ffmpeg binary is needed.

Each client plays the file from its start (a keyframe) rather than joining a shared live
feed: the shared clips have a keyframe only every few seconds, and a client that joined in
between would wait that long for its first frame. Standard library, OpenCV and numpy only,
and no pytest: it must run under the GPU machine's plain Python.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import re
import selectors
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from daemon.capture.packets import PacketSource, VideoCodec
from tests.harness.service import Service

log = logging.getLogger(__name__)

_MTU: Final = 1400
_PAYLOAD_TYPE: Final = 96
_CLOCK_HZ: Final = 90_000
_SSRC: Final = 0x0ED6E0A7
# Reading a local file: generous bounds that never fire in practice.
_FILE_TIMEOUT_S: Final = 10.0
_NAL_TYPE_SPS: Final = 7
_NAL_TYPE_PPS: Final = 8
_FU_A: Final = 28
_START_CODE: Final = re.compile(rb"\x00\x00\x01")
_PUBLIC: Final = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"


def nal_units(annex_b: bytes) -> list[bytes]:
    """The NAL units of an Annex-B byte string, start codes removed. A NAL unit never ends
    in a zero byte, so trailing zeros belong to the next four-byte start code."""
    return [unit.rstrip(b"\x00") for unit in _START_CODE.split(annex_b) if unit.strip(b"\x00")]


def rtp_packets(units: list[bytes], seq: int, timestamp: int) -> list[bytes]:
    """One access unit as RTP packets (RFC 6184): a NAL unit that fits goes whole, a larger
    one in FU-A fragments; the marker bit flags the access unit's last packet."""
    payloads: list[bytes] = []
    for unit in units:
        if len(unit) <= _MTU:
            payloads.append(unit)
            continue
        indicator = (unit[0] & 0xE0) | _FU_A
        body = unit[1:]
        chunks = [body[i : i + _MTU - 2] for i in range(0, len(body), _MTU - 2)]
        for i, chunk in enumerate(chunks):
            flags = (0x80 if i == 0 else 0) | (0x40 if i == len(chunks) - 1 else 0)
            payloads.append(bytes([indicator, flags | (unit[0] & 0x1F)]) + chunk)
    packets = []
    for i, payload in enumerate(payloads):
        marker = 0x80 if i == len(payloads) - 1 else 0
        header = struct.pack(
            "!BBHII", 0x80, marker | _PAYLOAD_TYPE, (seq + i) & 0xFFFF, timestamp, _SSRC
        )
        packets.append(header + payload)
    return packets


@dataclass(frozen=True)
class Clip:
    """A video file's frame rate and access units (each a list of NAL units), demuxed once
    up front: OpenCV's FFmpeg backend opens one source at a time per process, so a file
    opened while a client in the same process opens its stream would wait for that open,
    and the open for the stream this server has yet to send."""

    fps: float
    access_units: tuple[list[bytes], ...]

    @classmethod
    def load(cls, video: Path) -> Clip:
        """Demux ``video`` (H.264 only; raises ``ValueError`` otherwise)."""
        source = PacketSource(
            str(video), open_timeout_s=_FILE_TIMEOUT_S, read_timeout_s=_FILE_TIMEOUT_S
        )
        try:
            if source.codec is not VideoCodec.H264:
                raise ValueError(f"only H.264 is served: {video} is {source.codec.value}")
            units: list[list[bytes]] = []
            while (packet := source.read()) is not None:
                if packet.size:
                    units.append(nal_units(packet.tobytes()))
        finally:
            source.close()
        if not units:
            raise ValueError(f"no video packets in {video}")
        return cls(source.fps, tuple(units))

    def sdp(self, host: str) -> str:
        """The session description: one H.264 track with the SPS/PPS of the first keyframe
        in ``sprop-parameter-sets``, as cameras send them."""
        first = self.access_units[0]
        sps = next(u for u in first if u[0] & 0x1F == _NAL_TYPE_SPS)
        pps = next(u for u in first if u[0] & 0x1F == _NAL_TYPE_PPS)
        sets = ",".join(base64.b64encode(u).decode() for u in (sps, pps))
        return (
            f"v=0\r\no=- 0 0 IN IP4 {host}\r\ns=edgewatch\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=video 0 RTP/AVP {_PAYLOAD_TYPE}\r\na=rtpmap:{_PAYLOAD_TYPE} H264/{_CLOCK_HZ}\r\n"
            f"a=fmtp:{_PAYLOAD_TYPE} packetization-mode=1;profile-level-id={sps[1:4].hex()};"
            f"sprop-parameter-sets={sets}\r\na=control:track0\r\n"
        )


class _Server(socketserver.ThreadingTCPServer):
    """The listening socket, the clips and which cameras are up; one thread per client."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, sources: Mapping[str, Path], port: int) -> None:
        self.clips = {name: Clip.load(video) for name, video in sources.items()}
        self.running = dict.fromkeys(sources, True)
        self.stopping = threading.Event()
        # Daemon threads, so a test that never stops the server cannot hang the interpreter;
        # ``stop`` ends and joins them itself (``server_close`` joins only non-daemon ones).
        self.sessions: dict[threading.Thread, socket.socket] = {}
        super().__init__(("127.0.0.1", port), _Session)


class _Session(socketserver.BaseRequestHandler):
    """One client connection: its requests, then its stream after PLAY. While streaming,
    the wait between frames reads the client's requests and interleaved RTCP reports."""

    server: _Server

    def setup(self) -> None:
        self.server.sessions[threading.current_thread()] = self.request
        # Not select.select: it rejects descriptors >= 1024, which a process with many files
        # open hands out.
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.request, selectors.EVENT_READ)
        self.buffer = b""
        self.path: str | None = None
        self.playing = False
        self.session = f"{id(self):x}"

    def handle(self) -> None:
        try:
            while not self.server.stopping.is_set():
                if self._read(None):
                    self._requests()
                if self.playing and self.path is not None:
                    self._stream(self.path)
                    return
        except OSError:
            pass  # the client went away, or ``stop`` shut the connection

    def finish(self) -> None:
        self.selector.close()
        del self.server.sessions[threading.current_thread()]

    def _read(self, timeout_s: float | None) -> bool:
        """Wait up to ``timeout_s`` (None: until the server stops) for the client's bytes;
        raises ``ConnectionError`` when the client closed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.server.stopping.is_set():
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                return False
            if self.selector.select(left):
                data = self.request.recv(65536)
                if not data:
                    raise ConnectionError("client closed")
                self.buffer += data
                return True
        return False

    def _requests(self) -> None:
        """Answer every complete request buffered; skip interleaved frames (RTCP). A request
        that does not parse gets 400 and the session goes on, as with a real server."""
        while self.buffer:
            if self.buffer[0] == ord("$"):
                if len(self.buffer) < 4:
                    break
                size = 4 + struct.unpack("!H", self.buffer[2:4])[0]
                if len(self.buffer) < size:
                    break
                self.buffer = self.buffer[size:]
                continue
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                break
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
            }
            length_field = headers.get("content-length", "0")
            length = int(length_field) if length_field.isdecimal() else 0
            if len(rest) < length:
                break
            self.buffer = rest[length:]
            request_line = lines[0].split()
            if (
                len(request_line) != 3
                or not request_line[2].startswith("RTSP/")
                or not length_field.isdecimal()
            ):
                self._reply("400 Bad Request", headers.get("cseq"))
                continue
            method, url, _version = request_line
            self._answer(method, url, headers.get("cseq", "0"), headers)

    def _answer(self, method: str, url: str, cseq: str, headers: Mapping[str, str]) -> None:
        name = url.split("://", 1)[-1].partition("/")[2].split("/")[0]
        extra: dict[str, str] = {}
        body = ""
        status = "200 OK"
        if method in ("DESCRIBE", "SETUP", "PLAY") and not self.server.running.get(name, False):
            # An unknown path, or a stopped camera: no stream to describe or set up.
            status = "404 Not Found"
        elif method == "OPTIONS":
            extra["Public"] = _PUBLIC
        elif method == "DESCRIBE":
            body = self.server.clips[name].sdp("127.0.0.1")
            extra["Content-Base"] = f"rtsp://127.0.0.1:{self.server.server_address[1]}/{name}/"
            extra["Content-Type"] = "application/sdp"
        elif method == "SETUP":
            if "interleaved" not in headers.get("transport", ""):
                status = "461 Unsupported Transport"
            else:
                self.path = name
                extra["Transport"] = "RTP/AVP/TCP;unicast;interleaved=0-1"
        elif method == "PLAY":
            if self.path is None:
                status = "455 Method Not Valid in This State"
            else:
                self.playing = True
                extra["Range"] = "npt=0.000-"
        elif method not in ("TEARDOWN", "GET_PARAMETER"):
            status = "501 Not Implemented"
        self._reply(status, cseq, extra, body)
        if method == "TEARDOWN":
            raise ConnectionAbortedError("TEARDOWN")

    def _reply(
        self, status: str, cseq: str | None, extra: Mapping[str, str] | None = None, body: str = ""
    ) -> None:
        """Send one response; without ``cseq`` (a request that had none) no CSeq header."""
        reply = f"RTSP/1.0 {status}\r\n"
        if cseq is not None:
            reply += f"CSeq: {cseq}\r\n"
        reply += f"Session: {self.session};timeout=60\r\n"
        reply += "".join(f"{k}: {v}\r\n" for k, v in (extra or {}).items())
        reply += f"Content-Length: {len(body)}\r\n\r\n{body}"
        self.request.sendall(reply.encode())

    def _stream(self, name: str) -> None:
        """Send the file's access units on channel 0 in real time, until the client leaves,
        the server stops or the camera is stopped (then the connection closes: the client
        sees its camera go away)."""
        clip = self.server.clips[name]
        seq, started = 0, time.monotonic()
        log.debug("streaming", extra={"path": name})
        # The file loops; its timestamps go on from frame to frame, as a camera's do.
        for index, units in enumerate(itertools.cycle(clip.access_units)):
            if not self.server.running[name] or self.server.stopping.is_set():
                return
            timestamp = round(index * _CLOCK_HZ / clip.fps) & 0xFFFFFFFF
            packets = rtp_packets(units, seq, timestamp)
            seq += len(packets)
            self.request.sendall(
                b"".join(struct.pack("!BBH", ord("$"), 0, len(p)) + p for p in packets)
            )
            while (left := started + (index + 1) / clip.fps - time.monotonic()) > 0:
                if self._read(left):
                    self._requests()


class PyRtspServer(Service):
    """Serve ``sources`` (path name -> H.264 video file) at ``rtsp://127.0.0.1:PORT/<name>``,
    each looping in real time. Use as a context manager, or call ``start``/``stop``."""

    def __init__(self, sources: Mapping[str, Path], *, port: int = 0) -> None:
        if not sources:
            raise ValueError("PyRtspServer needs at least one source")
        for name, video in sources.items():
            if not name or "/" in name or not Path(video).is_file():
                raise ValueError(f"bad RTSP source {name!r}: {video}")
        self._sources = {name: Path(video) for name, video in sources.items()}
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> PyRtspServer:
        """Listen and serve in a background thread; returns once it listens."""
        if self._server is None:
            self._server = _Server(self._sources, self._requested_port)
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="py-rtsp", daemon=True
            )
            self._thread.start()
            log.info("pure-Python RTSP server listening", extra={"port": self.port})
        return self

    def stop(self) -> None:
        """Stop serving: every connection closes. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.stopping.set()
            server.shutdown()
            server.server_close()
            # Shut, not closed: this wakes a send blocked on a client that stopped reading.
            for thread, connection in server.sessions.copy().items():
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                thread.join()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("PyRtspServer is not started")
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        """``rtsp://127.0.0.1:PORT/path``."""
        if path not in self._sources:
            raise KeyError(f"no RTSP path {path!r}; serving {', '.join(self._sources)}")
        return f"rtsp://127.0.0.1:{self.port}/{path}"

    def stop_source(self, path: str) -> None:
        """Take one camera away: its streams end and new sessions are refused."""
        self._running()[path] = False

    def start_source(self, path: str) -> None:
        """Serve one camera again; new sessions play its video from the start."""
        self._running()[path] = True

    def _running(self) -> dict[str, bool]:
        if self._server is None:
            raise RuntimeError("PyRtspServer is not started")
        return self._server.running
