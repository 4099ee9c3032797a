"""Capture against real sources: video files, the real RTSP server, dead URLs.

Each test runs real reader processes; bounds are loose because the machine is shared.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil
import pytest

from daemon.capture.frame import FrameMeta
from daemon.capture.protocol import SourceKind
from daemon.capture.source import CameraSource
from daemon.capture.state import CameraState, StateChange
from daemon.capture.wake import WakeSender
from daemon.config.model import CameraConfig, CaptureConfig
from daemon.config.secrets import Secret
from tests.fixtures.data import VIDEOS
from tests.harness.rtsp import RtspServer

CLIP_25FPS_360P = VIDEOS / "traffic_cctv_road_360p.mp4"
FAST = CaptureConfig(
    open_timeout_s=3.0,
    read_timeout_s=2.0,
    reconnect_initial_s=0.3,
    reconnect_max_s=1.5,
    stall_timeout_s=10.0,
)


@dataclass
class Watched:
    """A started source plus everything ``pump`` saw from it."""

    source: CameraSource
    changes: list[StateChange] = field(default_factory=list)
    frames: list[FrameMeta] = field(default_factory=list)
    shapes: set[tuple[int, ...]] = field(default_factory=set)


class Cameras:
    """Starts sources and drives them like the daemon: poll often, consume the newest frame."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self.all: dict[str, Watched] = {}

    def add(
        self,
        cid: str,
        url: str,
        capture: CaptureConfig = FAST,
        max_fps: float | None = None,
        wake: WakeSender | None = None,
    ) -> Watched:
        camera = CameraConfig(id=cid, url=Secret(url), max_fps=max_fps)
        source = CameraSource(camera, capture, wake=wake)
        self._stack.callback(source.stop)
        source.start()
        watched = Watched(source)
        self.all[cid] = watched
        return watched

    def pump(self, seconds: float, consume: bool = True) -> None:
        self.until(lambda: False, seconds, consume)

    def until(self, done: Callable[[], bool], timeout: float, consume: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for watched in self.all.values():
                watched.changes += watched.source.poll()
                if consume:
                    with watched.source.acquire_latest() as item:
                        if item is not None:
                            meta, frame = item
                            watched.frames.append(meta)
                            watched.shapes.add(frame.shape)
                            assert frame.shape == (meta.height, meta.width, 3)
            if done():
                return True
            time.sleep(0.01)
        return done()


@pytest.fixture
def cameras() -> Iterator[Cameras]:
    with ExitStack() as stack:
        yield Cameras(stack)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _states(watched: Watched) -> list[CameraState]:
    return [change.state for change in watched.changes]


def _assert_seq_increasing(frames: list[FrameMeta]) -> None:
    seqs = [meta.seq for meta in frames]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)


def test_file_camera_is_paced_at_native_fps(cameras: Cameras) -> None:
    cam = cameras.add("file", str(CLIP_25FPS_360P))
    assert cameras.until(lambda: cam.source.state is CameraState.STREAMING, 10)
    start_count = cam.source.counters().frames_read
    cameras.pump(3.0)
    rate = (cam.source.counters().frames_read - start_count) / 3.0
    assert 12.5 <= rate <= 37.5, f"{rate:.1f} fps from a 25 fps file"
    assert cam.frames, "no frame consumed"
    _assert_seq_increasing(cam.frames)
    assert cam.shapes == {(360, 640, 3)}
    assert _states(cam) == [CameraState.STARTING, CameraState.STREAMING]
    newest = cam.frames[-1]
    assert newest.camera_id == "file"
    assert abs(time.time() - newest.capture_ts) < 5


def test_max_fps_skips_frames(cameras: Cameras) -> None:
    cam = cameras.add("slow", str(CLIP_25FPS_360P), max_fps=5)
    assert cameras.until(lambda: cam.source.state is CameraState.STREAMING, 10)
    start_count = cam.source.counters().frames_read
    cameras.pump(3.0)
    rate = (cam.source.counters().frames_read - start_count) / 3.0
    assert 2.5 <= rate <= 7.5, f"{rate:.1f} fps with max_fps 5"


def test_unconsumed_frames_are_counted_as_dropped(cameras: Cameras) -> None:
    cam = cameras.add("lazy", str(CLIP_25FPS_360P))
    assert cameras.until(lambda: cam.source.counters().frames_read >= 20, 10, consume=False)
    with cam.source.acquire_latest() as item:
        assert item is not None
        meta, _ = item
    cam.source.stop()
    counters = cam.source.counters()
    # Every frame but the newest one taken was overwritten unread.
    assert counters.frames_read >= meta.seq >= 20
    assert counters.frames_dropped >= meta.seq - 1
    assert counters.frames_dropped <= counters.frames_read - 1
    with cam.source.acquire_latest() as after_stop:
        assert after_stop is None


def test_frames_are_converted_only_near_the_expected_take(cameras: Cameras) -> None:
    cam = cameras.add("demand", str(CLIP_25FPS_360P))

    def take() -> FrameMeta:
        assert cameras.until(lambda: cam.source.pending_since() is not None, 10, consume=False)
        with cam.source.acquire_latest() as item:
            assert item is not None
            return item[0]

    take()
    time.sleep(2.0)
    second = take()  # two takes 2 s apart: the next is expected 1.6 s from now
    before = cam.source.counters()
    cameras.pump(0.8, consume=False)
    assert cam.source.pending_since() is None, "a frame was converted long before it was due"
    after = cam.source.counters()
    skipped = after.frames_read - before.frames_read
    assert skipped >= 10, f"only {skipped} frames grabbed in 0.8 s of a 25 fps file"
    assert after.frames_dropped - before.frames_dropped == skipped
    # Near the expected take the reader converts again, and the frame is a fresh one.
    third = take()
    assert third.seq > second.seq + skipped
    assert time.time() - third.capture_ts < 0.5
    # A take earlier than forecast: the daemon asks, and the next frame is converted.
    cam.source.want_now()
    assert cameras.until(lambda: cam.source.pending_since() is not None, 1.0, consume=False)


def test_every_frame_a_reader_process_publishes_signals_the_wake_channel(
    cameras: Cameras,
) -> None:
    receiver, sender = socket.socketpair()
    received = bytearray()

    def drain() -> None:
        while chunk := receiver.recv(4096):
            received.extend(chunk)

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    cam = cameras.add("wake", str(CLIP_25FPS_360P), wake=WakeSender(sender))
    # Nothing is taken, so the reader converts and publishes every frame it reads.
    assert cameras.until(lambda: cam.source.counters().frames_read >= 20, 10, consume=False)
    first = cam.source.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    # The reader started in its place signals the same channel.
    assert cameras.until(
        lambda: cam.source.pid not in (None, first) and cam.source.counters().frames_read >= 40,
        20,
        consume=False,
    )
    cam.source.stop()
    sender.close()  # the last copy of the sending end: the drainer sees its end
    drainer.join(10)
    assert not drainer.is_alive()
    receiver.close()
    read = cam.source.counters().frames_read
    # A reader killed between its publish and its signal owes that frame's byte.
    assert read - 2 <= len(received) <= read, (len(received), read)


def test_pinned_frame_is_not_overwritten(cameras: Cameras) -> None:
    cam = cameras.add("pin", str(CLIP_25FPS_360P))
    assert cameras.until(lambda: cam.source.pending_since() is not None, 10, consume=False)
    with cam.source.acquire_latest() as item:
        assert item is not None
        meta, frame = item
        snapshot = frame.copy()
        time.sleep(0.5)  # about 12 newer frames are written meanwhile
        assert (frame == snapshot).all()
    assert cam.source.counters().frames_read > meta.seq


def test_stop_leaves_no_process_segment_thread_or_fd(cameras: Cameras) -> None:
    me = psutil.Process()

    def cycle() -> tuple[int, list[str]]:
        source = CameraSource(CameraConfig(id="leak", url=Secret(str(CLIP_25FPS_360P))), FAST)
        source.start()
        deadline = time.monotonic() + 10
        while source.state is not CameraState.STREAMING and time.monotonic() < deadline:
            source.poll()
            time.sleep(0.02)
        assert source.state is CameraState.STREAMING
        pid = source.pid
        assert pid is not None
        shared = [
            m.path for m in psutil.Process(pid).memory_maps() if m.path.startswith("/dev/shm/")
        ]
        source.stop()
        source.stop()  # idempotent
        assert source.poll()[-1].state is CameraState.DOWN
        return pid, shared

    cycle()  # warm-up: starts multiprocessing's resource tracker once per process
    fds, threads = me.num_fds(), threading.active_count()
    for _ in range(3):
        pid, shared = cycle()
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert any("psm_" in path for path in shared)
        assert any("sem." in path for path in shared)
        assert [path for path in shared if Path(path).exists()] == []
    assert me.num_fds() == fds
    assert threading.active_count() == threads


def test_watchdog_restarts_a_frozen_reader(cameras: Cameras) -> None:
    watchdog = CaptureConfig(reconnect_initial_s=0.2, reconnect_max_s=1.0, stall_timeout_s=1.5)
    cam = cameras.add("frozen", str(CLIP_25FPS_360P), capture=watchdog)
    assert cameras.until(lambda: cam.source.state is CameraState.STREAMING, 10)
    frozen_pid = cam.source.pid
    assert frozen_pid is not None
    os.kill(frozen_pid, signal.SIGSTOP)  # a reader stuck where no timeout reaches it
    assert cameras.until(lambda: cam.source.counters().restarts == 1, 8)
    assert not psutil.pid_exists(frozen_pid)
    seen = len(cam.frames)
    assert cameras.until(lambda: len(cam.frames) > seen + 5, 10)
    assert cam.source.state is CameraState.STREAMING
    assert cam.source.pid not in (None, frozen_pid)
    assert CameraState.RECONNECTING in _states(cam)
    _assert_seq_increasing(cam.frames)


def test_a_stopped_reader_stops_claiming_streaming_long_before_the_stall_timeout(
    cameras: Cameras,
) -> None:
    patient = replace(FAST, stall_timeout_s=600.0)
    cam = cameras.add("paused", str(CLIP_25FPS_360P), capture=patient)
    assert cameras.until(lambda: cam.source.state is CameraState.STREAMING, 10)
    pid = cam.source.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        # Its silent heartbeat gives it away; the 600 s stall timeout would keep it
        # "streaming" with no frames for ten minutes.
        assert cameras.until(lambda: cam.source.state is not CameraState.STREAMING, 30)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert cam.changes[-1].state is CameraState.RECONNECTING
    assert "not responding" in (cam.changes[-1].reason or "")
    # Resumed, it streams again as the same process: it was never restarted.
    seen = len(cam.frames)
    assert cameras.until(
        lambda: cam.source.state is CameraState.STREAMING and len(cam.frames) > seen + 5, 15
    )
    assert cam.source.pid == pid
    assert cam.source.counters().restarts == 0


def test_dead_sources_never_block_a_good_one(cameras: Cameras) -> None:
    password = "hunter2pass"
    dead_rtsp = cameras.add("dead-rtsp", f"rtsp://admin:{password}@127.0.0.1:{_closed_port()}/x")
    missing = cameras.add("missing", "/nonexistent/edgewatch/clip.mp4")
    good = cameras.add("good", str(CLIP_25FPS_360P))
    assert cameras.until(
        lambda: (
            good.source.state is CameraState.STREAMING
            and dead_rtsp.source.state is CameraState.RECONNECTING
            and missing.source.state is CameraState.RECONNECTING
        ),
        10,
    )
    start_count = good.source.counters().frames_read
    cameras.pump(2.0)
    assert good.source.counters().frames_read - start_count >= 25  # ~50 at 25 fps
    for bad in (dead_rtsp, missing):
        assert bad.source.last_error
        assert bad.source.counters().reconnects >= 1
        assert bad.source.counters().frames_read == 0
    reasons = [c.reason or "" for c in dead_rtsp.changes] + [dead_rtsp.source.last_error or ""]
    assert all(password not in reason for reason in reasons)
    assert "nonexistent" in (missing.source.last_error or "")


def test_frame_larger_than_the_buffer_restarts_with_a_bigger_one(cameras: Cameras) -> None:
    small = replace(FAST, max_width=320, max_height=240)
    cam = cameras.add("big", str(CLIP_25FPS_360P), capture=small)
    assert cameras.until(lambda: len(cam.frames) >= 10, 15)
    assert cam.shapes == {(360, 640, 3)}
    assert cam.source.counters().restarts == 1
    _assert_seq_increasing(cam.frames)


def _make_clip(path: Path, size: str) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc=size={size}:rate=25:duration=1",
         "-c:v", "libx264", "-preset", "ultrafast", "-g", "5", "-f", "mpegts", str(path)],
        check=True,
        timeout=60,
    )  # fmt: skip


def test_stream_that_changes_resolution_keeps_delivering(cameras: Cameras, tmp_path: Path) -> None:
    parts = [tmp_path / "small.ts", tmp_path / "large.ts"]
    _make_clip(parts[0], "320x240")
    _make_clip(parts[1], "1280x720")
    clip = tmp_path / "changing.ts"
    clip.write_bytes(parts[0].read_bytes() + parts[1].read_bytes())
    cam = cameras.add("changing", str(clip))
    # Two passes through both halves of the clip.
    assert cameras.until(lambda: cam.source.counters().frames_read >= 100, 15)
    assert cam.source.state is CameraState.STREAMING
    assert cam.source.counters().frames_corrupt == 0
    # OpenCV scales frames after a mid-stream size change to the size seen at open.
    assert cam.shapes == {(240, 320, 3)}
    _assert_seq_increasing(cam.frames)


@pytest.mark.rtsp
def test_rtsp_camera_delivers_frames(cameras: Cameras, rtsp_server: RtspServer) -> None:
    cam = cameras.add("rtsp0", rtsp_server.url("cam0"))
    assert cameras.until(lambda: len(cam.frames) >= 20, 15), cam.changes
    _assert_seq_increasing(cam.frames)
    assert len(cam.shapes) == 1
    assert all(meta.camera_id == "rtsp0" and meta.width > 0 for meta in cam.frames)
    assert all(abs(time.time() - meta.capture_ts) < 15 for meta in cam.frames)
    assert _states(cam) == [CameraState.STARTING, CameraState.STREAMING]


@pytest.mark.rtsp
def test_rtsp_outage_reconnects_without_disturbing_others(
    cameras: Cameras, rtsp_server: RtspServer
) -> None:
    victim = cameras.add("victim", rtsp_server.url("cam1"))
    other = cameras.add("other", rtsp_server.url("cam2"))
    assert cameras.until(
        lambda: (
            victim.source.state is CameraState.STREAMING
            and other.source.state is CameraState.STREAMING
        ),
        15,
    )
    cameras.pump(0.5)
    try:
        rtsp_server.stop_source("cam1")
        killed = time.monotonic()
        assert cameras.until(lambda: victim.source.state is CameraState.RECONNECTING, 5)
        assert time.monotonic() - killed < 5
        other_before = other.source.counters().frames_read
        cameras.pump(1.5)
        assert other.source.counters().frames_read - other_before >= 10
        assert other.source.state is CameraState.STREAMING
    finally:
        rtsp_server.start_source("cam1")
    restored = time.monotonic()
    assert cameras.until(lambda: victim.source.state is CameraState.STREAMING, 5)
    assert time.monotonic() - restored < 5
    seen = len(victim.frames)
    assert cameras.until(lambda: len(victim.frames) > seen + 5, 5)
    _assert_seq_increasing(victim.frames)
    assert _states(other) == [CameraState.STARTING, CameraState.STREAMING]
    assert victim.source.counters().reconnects >= 1


@pytest.mark.rtsp
def test_rtsp_credentials_work_and_never_leak(cameras: Cameras, rtsp_server: RtspServer) -> None:
    password = "s3cret-pass"
    sources = {"secure": VIDEOS / "crowd_overhead_480p.mp4"}
    with RtspServer(sources, user="viewer", password=password) as server:
        good = cameras.add("auth-ok", server.url("secure"))
        wrong = cameras.add("auth-bad", server.url("secure").replace(password, "wrong-pass"))
        assert cameras.until(
            lambda: (
                good.source.state is CameraState.STREAMING
                and wrong.source.state is CameraState.RECONNECTING
            ),
            15,
        )
        assert good.frames or cameras.until(lambda: bool(good.frames), 5)
        texts = [c.reason or "" for w in (good, wrong) for c in w.changes]
        texts.append(wrong.source.last_error or "")
        assert all(password not in t and "wrong-pass" not in t for t in texts)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("rtsp://user:pw@10.0.0.5/live", SourceKind.STREAM),
        ("http://10.0.0.5/mjpeg", SourceKind.STREAM),
        ("/dev/video0", SourceKind.DEVICE),
        ("/dev/v4l/by-id/usb-Logitech_C920-video-index0", SourceKind.DEVICE),
        ("/srv/clips/entrance.mp4", SourceKind.FILE),
    ],
)
def test_source_kind_follows_the_config_url_forms(url: str, kind: SourceKind) -> None:
    assert SourceKind.of(url) is kind
