"""The reader process of one camera: OpenCV in, shared-memory ring out.

It runs in its own spawned process because OpenCV serialises ``VideoCapture.open`` across a
process and a stalled read cannot be interrupted in a thread; the daemon can always kill
and respawn a process. Imports: OpenCV, numpy, the standard library and the stdlib-only
``ring``/``protocol``/``secrets``/``logs``/``wake`` modules and ``packets`` (OpenCV only,
for its timeouts and FFmpeg options), so a spawn costs little more than importing cv2.
FFmpeg options are set in this process's environment, which OpenCV reads at each open.

Every frame is grabbed (decoded), but only frames the daemon may take are converted to BGR
into the ring (``daemon/capture/demand.py``); each one converted wakes the daemon's dispatch
loop (``daemon/capture/wake.py``).

The reader reconnects by itself with capped exponential backoff; it exits only when the
daemon goes away or a frame does not fit the ring (the daemon then enlarges the ring).

A camera with a GStreamer pipeline (``decoder: jetson``, ``daemon/capture/gstreamer.py``) is
opened with ``cv2.CAP_GSTREAMER``. The reader falls back to FFmpeg for the rest of its life,
with one WARNING, when this OpenCV build has no GStreamer backend (checked at start) or when
the pipeline fails to open and FFmpeg then opens the same source. When both fail the source
itself is down: the next attempt tries the pipeline again. Either way frames go through the
same ``stream`` loop, so reconnects, the watchdog and the counters are the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Lock
from typing import Final

import cv2
import numpy as np

from daemon.capture.pacing import MAX_CORRUPT_IN_ROW, TIMEOUT_SLACK_S, FilePacer, FpsLimit
from daemon.capture.packets import ffmpeg_capture_options, timeout_params
from daemon.capture.protocol import (
    EXIT_FRAME_TOO_LARGE,
    HEARTBEAT_PERIOD_S,
    FrameTooLarge,
    Notice,
    ReaderEvent,
    ReaderSpec,
    Reconnecting,
    SourceKind,
    Streaming,
)
from daemon.capture.ring import Frame, FrameRing, attach
from daemon.capture.wake import WakeSender
from daemon.config.secrets import mask_text, url_secrets
from daemon.logs import setup_child_logging

log = logging.getLogger("daemon.capture.decoder")

# OpenCV's FFmpeg backend retries a timed-out read this many times before grab() fails, so
# its per-attempt timeout is our read timeout divided by this (measured with OpenCV 5.0).
_OPENCV_READ_ATTEMPTS: Final = 3
# FFmpeg/OpenCV stderr lines let through per window; a broken stream can emit thousands.
_STDERR_LINES_PER_WINDOW: Final = 20
_STDERR_WINDOW_S: Final = 10.0
# Convert frames grabbed this many frame intervals before the daemon's expected take, so
# the newest frame is ready when it comes even if frames arrive a little late.
_DEMAND_LEAD_FRAMES: Final = 1.5
# Weight of the newest gap in the running mean of the frame interval.
_INTERVAL_SMOOTHING: Final = 0.1
# Gaps longer than this (a stall, a reconnect) say nothing about the frame rate.
_MAX_FRAME_GAP_S: Final = 1.0


class _Liveness:
    """Heartbeat that keeps beating only while the main loop is inside a bounded operation.

    A thread beats every 0.5 s until ``deadline``; the main loop moves the deadline before
    each open/read/sleep. If OpenCV overruns its own timeout the beats stop and the daemon's
    watchdog kills this process.
    """

    def __init__(self, ring: FrameRing, parent_pid: int) -> None:
        self._ring = ring
        self._parent_pid = parent_pid
        self._deadline = time.time() + TIMEOUT_SLACK_S
        ring.beat(time.time())
        threading.Thread(target=self._run, name="heartbeat", daemon=True).start()

    def until(self, deadline: float) -> None:
        self._deadline = deadline

    def _run(self) -> None:
        while True:
            if os.getppid() != self._parent_pid:
                # The daemon died without stopping us: leave nothing running.
                os._exit(0)
            now = time.time()
            if now <= self._deadline:
                self._ring.beat(now)
            time.sleep(HEARTBEAT_PERIOD_S)


def _route_stderr(camera_id: str, secrets: tuple[str, ...]) -> None:
    """Turn what FFmpeg and OpenCV write to fd 2 into log records in the daemon's format,
    masked and rate limited."""
    read_fd, write_fd = os.pipe()
    real_stderr = os.dup(2)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    # Open for the life of the process: the log handler writes to it until exit.
    stream = open(real_stderr, "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    setup_child_logging(stream)

    def pump() -> None:
        window_start, shown, suppressed = time.monotonic(), 0, 0
        context = {"camera": camera_id}
        # Buffered: iterating an unbuffered pipe reads it one byte per system call.
        with open(read_fd, "rb") as pipe:
            for raw in pipe:
                now = time.monotonic()
                if now - window_start >= _STDERR_WINDOW_S:
                    if suppressed:
                        log.warning(
                            "decoder messages suppressed",
                            extra={**context, "suppressed": suppressed},
                        )
                    window_start, shown, suppressed = now, 0, 0
                if shown >= _STDERR_LINES_PER_WINDOW:
                    suppressed += 1
                    continue
                shown += 1
                line = mask_text(raw.decode(errors="replace").strip(), secrets)
                if line:
                    log.warning("decoder message", extra={**context, "line": line})

    threading.Thread(target=pump, name="stderr", daemon=True).start()


class _Reader:
    def __init__(
        self,
        spec: ReaderSpec,
        ring: FrameRing,
        conn: Connection,
        parent_pid: int,
        wake: WakeSender | None,
    ) -> None:
        self.spec = spec
        self.ring = ring
        self.conn = conn
        self.wake = wake
        self.kind = SourceKind.of(spec.url.reveal())
        self.secrets = url_secrets(spec.url.reveal())
        self.live = _Liveness(ring, parent_pid)
        self.seq = ring.latest_seq()
        self.backoff = spec.reconnect_initial_s
        # Shape of the last frame; the next one is decoded straight into a slot of this shape.
        self.shape = (0, 0)
        self.fps_limit = FpsLimit(spec.max_fps)
        # Running mean of the time between grabbed frames (0 until known).
        self.frame_interval = 0.0
        self.last_grab = 0.0
        self.gstreamer = spec.gstreamer
        if self.gstreamer is not None and not gstreamer_backend():
            self.fall_back("this OpenCV build has no GStreamer backend")

    def send(self, event: ReaderEvent) -> None:
        self.conn.send(event)

    def mask(self, text: str) -> str:
        return mask_text(text, self.secrets)

    # -- opening ------------------------------------------------------------------------

    def open(self) -> cv2.VideoCapture:
        """Open the source; with a GStreamer pipeline, fall back to FFmpeg as the module says."""
        if self.gstreamer is None:
            return self.open_ffmpeg()
        self.live.until(time.time() + self.spec.open_timeout_s + TIMEOUT_SLACK_S)
        # OpenCV's GStreamer backend waits once per read, not once per retry as FFmpeg's.
        params = self.timeouts(read_attempts=1)
        cap = cv2.VideoCapture(self.gstreamer.launch.reveal(), cv2.CAP_GSTREAMER, params)
        if cap.isOpened():
            return cap
        cap.release()
        cap = self.open_ffmpeg()
        if cap.isOpened():
            # FFmpeg reaches the source, so the pipeline is what fails (no NVIDIA plugins,
            # wrong codec): retrying it would fail the same way at every reconnect.
            self.fall_back("the GStreamer pipeline did not open but FFmpeg did")
        return cap

    def open_ffmpeg(self) -> cv2.VideoCapture:
        url = self.spec.url.reveal()
        self.live.until(time.time() + self.spec.open_timeout_s + TIMEOUT_SLACK_S)
        if self.kind is SourceKind.DEVICE:
            return cv2.VideoCapture(url, cv2.CAP_V4L2)
        return cv2.VideoCapture(url, cv2.CAP_FFMPEG, self.timeouts(_OPENCV_READ_ATTEMPTS))

    def timeouts(self, read_attempts: int) -> list[int]:
        """OpenCV's open and per-attempt read timeouts, as ``VideoCapture`` parameters."""
        return timeout_params(self.spec.open_timeout_s, self.spec.read_timeout_s, read_attempts)

    def fall_back(self, reason: str) -> None:
        """Read with FFmpeg from now on, for the life of this process; says so once."""
        if self.gstreamer is None:
            return
        log.warning(
            "jetson decoder unavailable, reading with FFmpeg",
            extra={
                "camera": self.spec.camera_id,
                "reason": reason,
                "pipeline": self.mask(self.gstreamer.shown),
            },
        )
        self.gstreamer = None

    def fail(self, reason: str) -> None:
        """Report a failure and sleep the backoff, beating the heartbeat meanwhile."""
        self.send(Reconnecting(reason=self.mask(reason), retry_in_s=self.backoff))
        self.ring.count_reconnect()
        deadline = time.time() + self.backoff
        self.live.until(deadline + TIMEOUT_SLACK_S)
        time.sleep(max(0.0, deadline - time.time()))
        self.backoff = min(self.backoff * 2, self.spec.reconnect_max_s)

    # -- reading ------------------------------------------------------------------------

    def run(self) -> None:
        url = self.spec.url.reveal()
        while True:
            cap = self.open()
            if not cap.isOpened():
                cap.release()
                self.fail(f"cannot open {url}")
                continue
            self.fail(self.stream(cap))

    def stream(self, cap: cv2.VideoCapture) -> str:
        """Read until the source fails, release it and return why. Files loop here at EOF."""
        try:
            return self._stream(cap)
        finally:
            cap.release()

    def _stream(self, cap: cv2.VideoCapture) -> str:
        read_budget = self.spec.read_timeout_s + TIMEOUT_SLACK_S
        frames_since_open = 0
        corrupt_in_row = 0
        streaming = False
        pacing = self.kind is SourceKind.FILE
        pacer = FilePacer(cap.get(cv2.CAP_PROP_FPS), start=time.time()) if pacing else None
        while True:
            self.live.until(time.time() + read_budget)
            if not cap.grab():
                if not (pacing and frames_since_open > 0):
                    return "stream ended or read timed out" if streaming else "no frame received"
                # EOF of a file: seek to the start so it behaves like an endless camera.
                if not cap.set(cv2.CAP_PROP_POS_FRAMES, 0) or not cap.grab():
                    return "cannot loop the file at its end"
            frames_since_open += 1
            if pacer is not None:
                due = pacer.next_due()
                self.live.until(due + read_budget)
                time.sleep(max(0.0, due - time.time()))
            now = time.time()
            self.track_interval(now)
            if not self.fps_limit.keep(now):
                continue
            if not self.wanted(now):
                self.seq += 1
                self.ring.count_skipped()
                continue
            size = self.retrieve(cap, now)
            if size is None:
                self.ring.count_corrupt()
                corrupt_in_row += 1
                if corrupt_in_row >= MAX_CORRUPT_IN_ROW:
                    return f"{corrupt_in_row} undecodable frames in a row"
                continue
            corrupt_in_row = 0
            if not streaming:
                streaming = True
                self.backoff = self.spec.reconnect_initial_s
                self.send(Streaming(width=size[1], height=size[0]))

    def track_interval(self, now: float) -> None:
        gap, self.last_grab = now - self.last_grab, now
        if 0.0 < gap <= _MAX_FRAME_GAP_S:
            mean = self.frame_interval
            self.frame_interval = gap if not mean else mean + _INTERVAL_SMOOTHING * (gap - mean)

    def wanted(self, now: float) -> bool:
        """Whether to convert this frame: the daemon may take a frame before the next arrives."""
        return now + _DEMAND_LEAD_FRAMES * self.frame_interval >= self.ring.demand_at()

    def retrieve(self, cap: cv2.VideoCapture, capture_ts: float) -> tuple[int, int] | None:
        """Convert the grabbed (decoded) frame into a free slot and publish it; None if unusable."""
        slot = self.ring.free_slot()
        height, width = self.shape
        target: Frame | None = self.ring.view(slot, height, width) if height else None
        ok, image = cap.retrieve(target) if target is not None else cap.retrieve()
        if not ok or image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
            return None
        if target is None or image is not target:
            # First frame or a new resolution: OpenCV allocated; copy into the slot once.
            height, width = int(image.shape[0]), int(image.shape[1])
            if height * width * 3 > self.ring.capacity:
                self.send(FrameTooLarge(width=width, height=height))
                self.conn.close()
                os._exit(EXIT_FRAME_TOO_LARGE)
            if self.shape not in ((0, 0), (height, width)):
                self.send(Notice(f"resolution changed to {width}x{height}"))
            self.shape = (height, width)
            np.copyto(self.ring.view(slot, height, width), image)
        self.seq += 1
        self.ring.publish(slot, self.seq, capture_ts, height, width)
        if self.wake is not None:
            self.wake.signal()
        return height, width


def gstreamer_backend() -> bool:
    """Whether this OpenCV build can open a GStreamer pipeline (JetPack's can; PyPI's cannot)."""
    return bool(cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER))


def run_reader(
    spec: ReaderSpec, lock: Lock, conn: Connection, parent_pid: int, wake: WakeSender | None
) -> None:
    """Entry point of the reader process (the target of the spawned Process); the process
    ends, with status 0, when this returns. ``wake`` hears of each frame published."""
    url = spec.url.reveal()
    if SourceKind.of(url) is SourceKind.STREAM:
        # Read by OpenCV's FFmpeg backend at each open; per process, so per camera.
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = ffmpeg_capture_options(spec.read_timeout_s)
    _route_stderr(spec.camera_id, url_secrets(url))
    # OpenCV's own warnings repeat on every retry ("can't be used to capture by name") and
    # say less than the reason the reader reports; FFmpeg's errors still come through.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    # One camera per process: OpenCV's own thread pool would only compete with the others.
    cv2.setNumThreads(1)
    ring = attach(spec.shm_name, spec.capacity, lock)
    # The daemon closing its end of the pipe is how it stops us.
    with contextlib.suppress(BrokenPipeError, EOFError, ConnectionResetError):
        _Reader(spec, ring, conn, parent_pid, wake).run()
