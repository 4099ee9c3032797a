"""A real RTSP server on loopback serving video files as live cameras.

``RtspServer`` runs GStreamer's RTSP server (Debian packages, see ``gst_rtsp_server.py``)
with one path per camera, each fed by its own ``ffmpeg -re -stream_loop -1 -c copy``
process that sends the file's video track as RTP to a loopback UDP port.

A client can only start decoding at a keyframe, and the shared clips have one every 3-5 s,
so a fresh client would wait that long for its first frame. By default each clip is
therefore re-encoded once (video only, x264 ultrafast, one keyframe per ``gop_s``, SPS/PPS repeated)
into a cache under ``$XDG_CACHE_HOME/edgewatch/rtsp`` and then served without
re-encoding, so serving costs next to no CPU. Killing one feed
(``stop_source``) freezes exactly that camera the way a dead camera does: the RTSP session
stays up but no frames come. Used by the tests, ``edgewatch bench e2e`` and the demo, so it
must not import pytest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final
from urllib.parse import quote

from tests.harness.process import terminate
from tests.harness.service import Service

# The GStreamer gi bindings import only under Debian's interpreter, never a venv's.
SYSTEM_PYTHON: Final = Path("/usr/bin/python3")
_SERVER_SCRIPT: Final = Path(__file__).with_name("gst_rtsp_server.py")
_START_TIMEOUT_S: Final = 10.0
_STOP_TIMEOUT_S: Final = 3.0
# Bump when the encoding recipe changes, to invalidate cached clips.
_RECIPE: Final = "x264-ultrafast-crf26-repeat-headers-v1"


class RtspServerError(RuntimeError):
    """The RTSP server or one of its feeds could not be started."""


def missing_tools() -> list[str]:
    """What this machine lacks to run ``RtspServer`` (empty when it can)."""
    missing = [] if shutil.which("ffmpeg") else ["ffmpeg"]
    if not SYSTEM_PYTHON.exists():
        missing.append(str(SYSTEM_PYTHON))
        return missing
    probe = subprocess.run(
        [
            str(SYSTEM_PYTHON),
            "-c",
            "import gi; gi.require_version('GstRtspServer', '1.0'); "
            "from gi.repository import GstRtspServer",
        ],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        missing.append("python3-gi with gir1.2-gst-rtsp-server-1.0 (Debian packages)")
    return missing


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgewatch" / "rtsp"


def _cached_name(video: Path, gop_s: float) -> str:
    stat = video.stat()
    key = f"{video.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{gop_s}|{_RECIPE}"
    return f"{video.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.ts"


def prepare_clips(videos: Mapping[str, Path], gop_s: float) -> dict[str, Path]:
    """Re-encode clips (in parallel, once; later calls hit the cache) for fast joins."""
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Path] = {}
    jobs: list[tuple[Path, Path, subprocess.Popen[bytes]]] = []
    for name, video in videos.items():
        target = out_dir / _cached_name(video, gop_s)
        result[name] = target
        if target.exists() or any(job[1] == target for job in jobs):
            continue
        # Unique temp name, renamed atomically: concurrent test runs may race here.
        partial = target.with_suffix(f".{os.getpid()}.partial")
        command = [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(video),
            "-map", "0:v:0", "-an", "-c:v", "libx264", "-preset", "ultrafast",
            "-tune", "zerolatency", "-crf", "26",
            "-force_key_frames", f"expr:gte(t,n_forced*{gop_s})",
            "-x264-params", "repeat-headers=1", "-f", "mpegts", str(partial),
        ]  # fmt: skip
        jobs.append((partial, target, subprocess.Popen(command, stderr=subprocess.PIPE)))
    failures = []
    for partial, target, process in jobs:
        _, err = process.communicate()
        if process.returncode == 0:
            partial.replace(target)
        else:
            partial.unlink(missing_ok=True)
            failures.append(f"{target.name}: {err.decode(errors='replace').strip()}")
    if failures:
        raise RtspServerError("cannot re-encode clips: " + "; ".join(failures))
    return result


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class _Feed:
    video: Path
    udp_port: int
    process: subprocess.Popen[bytes] | None = field(default=None)


class RtspServer(Service):
    """Serve ``sources`` (path name -> video file) at ``rtsp://127.0.0.1:PORT/<name>``.

    With ``user``/``password`` every path requires RTSP basic authentication. ``gop_s``
    is the keyframe interval of the re-encoded copies (a new client's wait for a frame).
    Use as a context manager, or call ``start``/``stop``.
    """

    def __init__(
        self,
        sources: Mapping[str, Path],
        *,
        user: str | None = None,
        password: str | None = None,
        port: int = 0,
        gop_s: float = 1.0,
    ) -> None:
        if not sources:
            raise ValueError("RtspServer needs at least one source")
        for name, video in sources.items():
            if not name or "/" in name or not Path(video).is_file():
                raise ValueError(f"bad RTSP source {name!r}: {video}")
        self._feeds = {
            name: _Feed(Path(video), _free_udp_port()) for name, video in sources.items()
        }
        self._user = user
        self._password = password
        self._requested_port = port
        self._gop_s = gop_s
        self._port: int | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._server_log: IO[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> RtspServer:
        """Start the server and every feed; returns once the server listens."""
        if self._server is not None:
            return self
        clips = prepare_clips({n: f.video for n, f in self._feeds.items()}, self._gop_s)
        for name, clip in clips.items():
            self._feeds[name].video = clip
        command = [str(SYSTEM_PYTHON), str(_SERVER_SCRIPT), "--port", str(self._requested_port)]
        for name, feed in self._feeds.items():
            command += ["--path", f"{name}={feed.udp_port}"]
        if self._user:
            command += ["--user", self._user, "--password", self._password or ""]
        # A file, not a pipe: nobody drains the server's warnings while it runs.
        self._server_log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        # stdin stays open as a lifeline: the server exits when this process goes away.
        self._server = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._server_log
        )
        try:
            self._port = self._wait_ready(self._server, self._server_log)
            for name in self._feeds:
                self.start_source(name)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every feed and the server; idempotent, leaves no process behind."""
        for name in self._feeds:
            self.stop_source(name)
        server, self._server = self._server, None
        if server is not None:
            terminate(server, _STOP_TIMEOUT_S)
            for stream in (server.stdin, server.stdout):
                if stream is not None:
                    stream.close()
        log, self._server_log = self._server_log, None
        if log is not None:
            log.close()

    # -- cameras --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("RtspServer is not started")
        return self._port

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._feeds)

    def url(self, path: str, *, credentials: bool = True) -> str:
        """``rtsp://[user:password@]127.0.0.1:PORT/path``."""
        if path not in self._feeds:
            raise KeyError(f"no RTSP path {path!r}; serving {', '.join(self._feeds)}")
        auth = ""
        if credentials and self._user:
            auth = f"{quote(self._user, safe='')}:{quote(self._password or '', safe='')}@"
        return f"rtsp://{auth}127.0.0.1:{self.port}/{path}"

    def stop_source(self, path: str) -> None:
        """Kill one camera's feed: its clients stop receiving frames (a dead camera)."""
        feed = self._feeds[path]
        process, feed.process = feed.process, None
        if process is not None:
            terminate(process, _STOP_TIMEOUT_S)

    def start_source(self, path: str) -> None:
        """(Re)start one camera's feed from the beginning of its video."""
        feed = self._feeds[path]
        if feed.process is not None and feed.process.poll() is None:
            return
        feed.process = subprocess.Popen(
            [
                "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
                "-re", "-stream_loop", "-1", "-i", str(feed.video),
                # Video only. The re-encoded copy is already Annex B with SPS/PPS in band
                # (the server's h264parse needs them); a bitstream filter here would be
                # wrong anyway: ffmpeg 5.1 drops every packet after the first loop with one.
                "-map", "0:v:0", "-an", "-c:v", "copy",
                "-f", "rtp", f"rtp://127.0.0.1:{feed.udp_port}?pkt_size=1316",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def source_running(self, path: str) -> bool:
        process = self._feeds[path].process
        return process is not None and process.poll() is None

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _wait_ready(server: subprocess.Popen[bytes], log: IO[bytes]) -> int:
        stdout: IO[bytes] | None = server.stdout
        assert stdout is not None
        os.set_blocking(stdout.fileno(), False)
        deadline = time.monotonic() + _START_TIMEOUT_S
        buffered = b""
        while time.monotonic() < deadline:
            chunk = stdout.read()
            if chunk:
                buffered += chunk
                for line in buffered.splitlines():
                    if line.startswith(b"READY "):
                        return int(line.split()[1])
            if server.poll() is not None:
                log.seek(0)
                err = log.read().decode(errors="replace")
                raise RtspServerError(f"RTSP server exited ({server.returncode}): {err.strip()}")
            time.sleep(0.02)
        raise RtspServerError(f"RTSP server not ready after {_START_TIMEOUT_S:.0f} s")
