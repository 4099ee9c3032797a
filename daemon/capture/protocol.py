"""What the daemon hands a reader process and what the reader reports back.

Imported by the reader process: standard library (and the stdlib-only config modules) only.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from enum import Enum
from typing import Final

from daemon.capture.gstreamer import GstPipeline
from daemon.config.external import is_stream_url
from daemon.config.secrets import Secret

# How reader processes, their pipes and the ring's header lock are made. Never fork: the
# daemon has threads (and an event loop) that a fork would copy half-way.
SPAWN: Final = multiprocessing.get_context("spawn")
# Exit status of a reader that met a frame larger than its ring (the daemon enlarges it).
EXIT_FRAME_TOO_LARGE: Final = 3
# A reader beats its heartbeat this often while it is inside a bounded operation.
HEARTBEAT_PERIOD_S: Final = 0.5
# A heartbeat older than this means the reader is not running (stopped, starved, hung): its
# camera no longer counts as streaming. Six missed beats: a busy box delays a beat, not six.
HEARTBEAT_TIMEOUT_S: Final = 6 * HEARTBEAT_PERIOD_S


class SourceKind(str, Enum):
    """How a camera URL is opened and paced."""

    STREAM = "stream"  # rtsp:// and other network URLs: read as fast as they arrive
    DEVICE = "device"  # V4L2 /dev/videoN or /dev/v4l/by-id/...
    FILE = "file"  # paced at its native fps and looped, like a live camera

    @classmethod
    def of(cls, url: str) -> SourceKind:
        if is_stream_url(url):
            return cls.STREAM
        if url.startswith("/dev/"):
            return cls.DEVICE
        return cls.FILE


@dataclass(frozen=True, slots=True)
class ReaderSpec:
    """Everything a reader process needs; picklable for the spawn start method."""

    camera_id: str
    url: Secret
    max_fps: float | None
    open_timeout_s: float
    read_timeout_s: float
    reconnect_initial_s: float
    reconnect_max_s: float
    shm_name: str
    capacity: int
    # Read with OpenCV's GStreamer backend through this pipeline; None reads with FFmpeg.
    gstreamer: GstPipeline | None = None


@dataclass(frozen=True, slots=True)
class Streaming:
    """The reader delivered its first good frame since it (re)connected."""

    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The source failed; the reader backs off and retries. ``reason`` is masked."""

    reason: str
    retry_in_s: float


@dataclass(frozen=True, slots=True)
class Notice:
    """Something an operator should see in the daemon's log (masked)."""

    message: str


@dataclass(frozen=True, slots=True)
class FrameTooLarge:
    """A frame does not fit the ring; the reader exits with ``EXIT_FRAME_TOO_LARGE``."""

    width: int
    height: int


ReaderEvent = Streaming | Reconnecting | Notice | FrameTooLarge
