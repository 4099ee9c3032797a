"""A camera decoded by a dGPU's NVDEC (``decoder: nvdec``), straight into CUDA memory.

OpenCV demuxes the camera (``PacketSource``, daemon/capture/packets.py: a network stream, or
a video file played at its frame rate and looped like a live camera) into encoded packets
that PyNvVideoCodec decodes on NVDEC; each frame arrives as an HxWx3 uint8 RGB CUDA array
(DLPack) and is copied, on the camera's own CUDA stream, into one of ``SLOTS``
device buffers of ``DeviceFrames``, the device counterpart of the shared-memory ring: newest
frame wins, an unconsumed frame that is overwritten counts as dropped, a frame being batched
is never written to.

The reader is a thread of the pipeline's process, not a process of its own: the frames
must live in the CUDA context that infers them, and a context per camera would cost
hundreds of MB of GPU memory each. ``ReaderSupervisor`` runs it like a reader process
(same events, states, heartbeat watchdog and backoff). The one difference: a thread cannot
be killed. A reader whose heartbeat stops past ``stall_timeout_s`` is abandoned (it writes,
counts and sends nothing any more; the thread ends when its call returns) and a new one
starts. OpenCV's reads are bounded by the camera's timeouts and release the GIL while they
wait, so a silent camera holds up only its own thread.

torch and PyNvVideoCodec are imported by the reader thread only: this module is imported
wherever cameras are, including installs without them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe
from typing import Any, Final

from daemon.capture.device_gate import DeviceGate
from daemon.capture.frame import FrameMeta
from daemon.capture.pacing import MAX_CORRUPT_IN_ROW, TIMEOUT_SLACK_S, FilePacer, FpsLimit
from daemon.capture.packets import Packet, PacketSource, PacketSourceError
from daemon.capture.protocol import (
    HEARTBEAT_PERIOD_S,
    ReaderEvent,
    Reconnecting,
    SourceKind,
    Streaming,
)
from daemon.capture.state import CaptureCounters
from daemon.capture.supervisor import EventSource, RunningReader
from daemon.capture.wake import WakeSender
from daemon.config.model import CameraConfig, CaptureConfig
from daemon.config.secrets import mask_text, url_secrets

log = logging.getLogger("daemon.capture.nvdec")

# Device frame buffers per camera: the newest frame, one being batched, one being written.
SLOTS: Final = 3


def unavailable_reason() -> str | None:
    """Why NVDEC cannot be used in this process (None when it can): PyNvVideoCodec or
    torch missing, or no CUDA device."""
    try:
        import PyNvVideoCodec  # noqa: F401
        import torch
    except ImportError as exc:  # also raised when libnvcuvid is missing
        return f"cannot import {exc.name or 'PyNvVideoCodec'}: {exc}"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


@dataclass(frozen=True, slots=True)
class NvdecTarget:
    """Where NVDEC cameras decode to: the inferring backend's CUDA device, and the gate its
    graph captures close (``DeviceGate``)."""

    gpu: int
    gate: DeviceGate
    # OpenCV opens one source at a time per process: its readers take turns here, so that
    # time spent waiting for another camera's open is not taken for a stall.
    opening: threading.Lock = field(default_factory=threading.Lock)


@dataclass(slots=True)
class _Slot:
    image: Any = None  # torch.Tensor [H, W, 3] uint8 on the device, allocated on first use
    seq: int = 0
    capture_ts: float = 0.0
    pins: int = 0


class DeviceFrames:
    """One camera's newest-frame buffers in CUDA memory (the ``FrameStore`` of an NVDEC
    camera). ``publish`` runs on the reader thread; ``acquire_latest`` on batch worker
    threads; the rest on the event loop thread. One lock orders them, never held during a
    copy."""

    def __init__(self, camera_id: str, wake: WakeSender | None = None) -> None:
        """``wake``: signalled after each frame the current reader publishes."""
        self.camera_id = camera_id
        self._wake = wake
        self._lock = threading.Lock()
        self._slots = [_Slot() for _ in range(SLOTS)]
        self._latest: int | None = None
        self._consumed_seq = 0
        self._seq = 0
        self._counts = CaptureCounters()
        # The heartbeat: the reader promises to be back before this time (see ``alive_until``).
        self._alive_until: float | None = None
        # Only the current reader may write; an abandoned one holds an older token.
        self._writer = 0
        self._closed = False

    # -- the reader thread ------------------------------------------------------------------

    def new_writer(self) -> int:
        """Revoke the previous reader's right to write; the token of the next one. The free
        slots get new buffers: a revoked reader may still be copying into one."""
        with self._lock:
            self._writer += 1
            # The new reader is alive once it beats, not on its predecessor's promise.
            self._alive_until = None
            for i, slot in enumerate(self._slots):
                if i != self._latest and not slot.pins:
                    slot.image = None
            return self._writer

    def alive_until(self, writer: int, deadline: float) -> None:
        """The reader is inside an operation bounded by ``deadline``: its heartbeat beats
        until then (``heartbeat``), and stops if it overruns."""
        with self._lock:
            if writer == self._writer:
                self._alive_until = deadline

    def free_slot(self, writer: int) -> int | None:
        """A slot that is neither the newest frame nor being batched; None when a stale
        writer asks or when every slot is busy (the frame is then dropped)."""
        with self._lock:
            if writer != self._writer or self._closed:
                return None
            for i, slot in enumerate(self._slots):
                if i != self._latest and not slot.pins:
                    return i
            # Dropped unseen; its seq is spent as an overwritten frame's is.
            self._seq += 1
            self._counts = _add(self._counts, frames_read=1, frames_dropped=1)
            return None

    def slot_image(self, index: int) -> Any:
        """The device buffer of a free slot (None before its first frame)."""
        return self._slots[index].image

    def publish(self, writer: int, index: int, image: Any, capture_ts: float) -> None:
        """Make slot ``index``, now holding ``image`` (whose copy has completed), the newest
        frame; an unconsumed predecessor counts as dropped."""
        with self._lock:
            if writer != self._writer or self._closed:
                return
            dropped = int(self._latest is not None and self._seq > self._consumed_seq)
            self._seq += 1
            slot = self._slots[index]
            slot.image, slot.seq, slot.capture_ts = image, self._seq, capture_ts
            self._latest = index
            self._counts = _add(self._counts, frames_read=1, frames_dropped=dropped)
            # Under this camera's lock: once the store is closed (before the pipeline closes
            # the channel) no reader signals. A lock shared by every reader of the channel
            # would instead make them queue for it and for the GIL on each frame.
            if self._wake is not None:
                self._wake.signal()

    def count(self, writer: int, **increments: int) -> None:
        """Add to the counters (reconnects, frames_corrupt) for the current reader."""
        with self._lock:
            if writer == self._writer:
                self._counts = _add(self._counts, **increments)

    # -- the supervisor (FrameStore) --------------------------------------------------------

    def heartbeat(self) -> float | None:
        """When the reader last showed it was running: now while it is inside a bounded
        operation, the operation's deadline once it overran; None before a reader."""
        alive_until = self._alive_until
        return None if alive_until is None else min(time.time(), alive_until)

    def counts(self) -> CaptureCounters:
        """The camera's counters (``restarts`` is 0: the supervisor counts those)."""
        return self._counts

    def close(self) -> None:
        """Stop taking frames and drop the buffers no batch holds."""
        with self._lock:
            self._closed = True
            self._writer += 1
            self._latest = None
            for slot in self._slots:
                if not slot.pins:
                    slot.image = None

    # -- the batch workers ------------------------------------------------------------------

    def pending_since(self) -> float | None:
        """Capture time of the newest unconsumed frame, or None when there is nothing new."""
        with self._lock:
            if self._latest is None or self._seq <= self._consumed_seq:
                return None
            return self._slots[self._latest].capture_ts

    @contextlib.contextmanager
    def acquire_latest(self) -> Iterator[tuple[FrameMeta, Any] | None]:
        """Yield the newest unconsumed frame (an HxWx3 uint8 RGB CUDA tensor) or None. The
        slot is not written until the block exits: every device read of it must have
        completed by then."""
        with self._lock:
            index = self._latest
            if index is None or self._seq <= self._consumed_seq:
                taken = None
            else:
                slot = self._slots[index]
                slot.pins += 1
                self._consumed_seq = slot.seq
                height, width = int(slot.image.shape[0]), int(slot.image.shape[1])
                meta = FrameMeta(self.camera_id, slot.seq, slot.capture_ts, width, height)
                taken = (meta, slot.image)
        if taken is None or index is None:
            yield None
            return
        try:
            yield taken
        finally:
            with self._lock:
                self._slots[index].pins -= 1

    def want_now(self) -> None:
        """Nothing to do: NVDEC converts every frame it decodes."""

    def release_retired(self) -> None:
        """Nothing to do: device buffers are replaced in place."""


def _add(counts: CaptureCounters, **increments: int) -> CaptureCounters:
    return dataclasses.replace(
        counts, **{name: getattr(counts, name) + n for name, n in increments.items()}
    )


class _ThreadReader:
    """A running NVDEC reader thread (``RunningReader``)."""

    def __init__(
        self,
        thread: threading.Thread,
        stop: threading.Event,
        conn: Connection,
        reader: _NvdecReader,
        frames: DeviceFrames,
    ) -> None:
        self._thread = thread
        self._stop = stop
        self._conn = conn
        self._reader = reader
        self._frames = frames

    @property
    def pid(self) -> int | None:
        """The thread's native id: what ``top -H`` and ``py-spy`` show for this reader."""
        return self._thread.native_id

    @property
    def exitcode(self) -> int | None:
        """None while the thread runs; 1 if it ended on an unexpected error, else 0."""
        if self._thread.is_alive():
            return None
        return 1 if self._reader.failed else 0

    @property
    def events(self) -> EventSource:
        return self._conn

    def stop(self, timeout: float) -> None:
        self._stop.set()
        # From now on it cannot write, count or beat, even before it notices the stop.
        self._frames.new_writer()
        self._thread.join(timeout)
        # A thread stuck in a call cannot be killed: it is left to finish it, after which it
        # sees the stop and ends.
        self._conn.close()


class NvdecLauncher:
    """Starts a camera's NVDEC reader thread on ``frames`` (``Launcher``)."""

    def __init__(
        self,
        camera: CameraConfig,
        capture: CaptureConfig,
        frames: DeviceFrames,
        target: NvdecTarget,
    ) -> None:
        self._camera = camera
        self._capture = capture
        self._frames = frames
        self._target = target
        self._incarnation = itertools.count(1)

    def __call__(self, min_capacity: int | None) -> RunningReader | None:
        stop = threading.Event()
        receiver, sender = Pipe(duplex=False)
        reader = _NvdecReader(
            camera=self._camera,
            capture=self._capture,
            frames=self._frames,
            target=self._target,
            stop=stop,
            conn=sender,
        )
        thread = threading.Thread(
            target=reader.run,
            name=f"nvdec-{self._camera.id}-{next(self._incarnation)}",
            daemon=True,
        )
        thread.start()
        return _ThreadReader(thread, stop, receiver, reader, self._frames)


class _NvdecReader:
    """The body of one reader thread: open, decode, copy, reconnect with backoff."""

    def __init__(
        self,
        *,
        camera: CameraConfig,
        capture: CaptureConfig,
        frames: DeviceFrames,
        target: NvdecTarget,
        stop: threading.Event,
        conn: Connection,
    ) -> None:
        self._camera = camera
        self._capture = capture
        self._frames = frames
        self._gpu = target.gpu
        self._gate = target.gate
        self._opening = target.opening
        self._stop = stop
        self._conn = conn
        self._writer = frames.new_writer()
        self._url = camera.url.reveal()
        self._file = SourceKind.of(self._url) is SourceKind.FILE
        self._secrets = url_secrets(self._url)
        self._backoff = capture.reconnect_initial_s
        self._fps_limit = FpsLimit(camera.max_fps)
        # Ended by an unexpected error (not a stop, not a source failure).
        self.failed = False

    def run(self) -> None:
        """Read until stopped; every failure is reported and retried after the backoff."""
        try:
            self._run()
        except (OSError, EOFError):
            # The connection was closed: the supervisor let this reader go.
            return
        except Exception:
            # The supervisor sees the thread end (status 1) and restarts it; say why here.
            self.failed = True
            log.exception("nvdec reader failed", extra={"camera": self._camera.id})

    def _run(self) -> None:
        import PyNvVideoCodec as nvc
        import torch

        torch.cuda.set_device(self._gpu)
        stream = torch.cuda.Stream()
        while not self._stop.is_set():
            reason = self._stream(nvc, torch, stream)
            if self._stop.is_set():
                return
            self._send(Reconnecting(mask_text(reason, self._secrets), self._backoff))
            self._frames.count(self._writer, reconnects=1)
            self._beat(self._backoff)
            self._stop.wait(self._backoff)
            self._backoff = min(self._backoff * 2, self._capture.reconnect_max_s)

    def _send(self, event: ReaderEvent) -> None:
        if not self._stop.is_set():
            self._conn.send(event)

    def _waiting(self) -> None:
        """Held back by a graph capture: still alive."""
        self._beat(self._capture.read_timeout_s)

    def _beat(self, bound_s: float) -> None:
        self._frames.alive_until(self._writer, time.time() + bound_s + TIMEOUT_SLACK_S)

    def _packets(self) -> PacketSource:
        """Open the camera's packets (raises ``PacketSourceError``)."""
        while not self._opening.acquire(timeout=HEARTBEAT_PERIOD_S):
            self._waiting()
            if self._stop.is_set():
                raise PacketSourceError("stopped")
        try:
            self._beat(self._capture.open_timeout_s)
            return PacketSource(
                self._url,
                open_timeout_s=self._capture.open_timeout_s,
                read_timeout_s=self._capture.read_timeout_s,
            )
        finally:
            self._opening.release()

    def _decoder(self, nvc: Any, stream: Any, packets: PacketSource) -> Any:
        # The decoder allocates device memory: never while a graph is captured.
        with self._gate.work(self._waiting):
            return nvc.CreateDecoder(
                gpuid=self._gpu,
                codec=getattr(nvc.cudaVideoCodec, packets.codec.value),
                cudacontext=0,
                cudastream=stream.cuda_stream,
                usedevicememory=True,
                outputColorType=nvc.OutputColorType.RGB,
            )

    def _stream(self, nvc: Any, torch: Any, stream: Any) -> str:
        """Decode until the camera cannot be read; returns why. A file loops at its end."""
        try:
            packets = self._packets()
        except PacketSourceError as exc:
            return str(exc)
        try:
            # Only this list refers to the decoder, so no frame of a raised exception keeps it.
            held = [self._decoder(nvc, stream, packets)]
        except Exception as exc:  # PyNvVCException and friends carry the reason
            packets.close()
            return f"cannot decode {self._url} on NVDEC: {exc}"
        try:
            return self._decode(nvc, torch, stream, packets, held)
        finally:
            # Dropping the last reference frees the decoder's device memory: not during a
            # graph capture either.
            with self._gate.work(self._waiting):
                held.clear()

    def _decode(
        self, nvc: Any, torch: Any, stream: Any, packets: PacketSource, decoder: list[Any]
    ) -> str:
        # A file's schedule starts at its first frame: NVDEC's set-up takes a while after
        # the open, and frames due meanwhile would otherwise come out in a burst.
        pacer = FilePacer(packets.fps) if self._file else None
        progress = _Progress()
        try:
            while True:
                reason = self._pass(
                    nvc,
                    torch,
                    stream,
                    packets=packets,
                    decoder=decoder[0],
                    pacer=pacer,
                    progress=progress,
                )
                if reason is not None:
                    return reason
                if pacer is None or not progress.decoded:
                    # A file that gave no frame in a whole pass cannot be looped.
                    if pacer is not None and progress.streaming:
                        return "cannot loop the file at its end: no frame after it started again"
                    if progress.streaming:
                        return "stream ended or read timed out"
                    return "no frame received"
                # The end of a file: open it again so it behaves like an endless camera. The
                # decoder goes on: the new pass starts at a keyframe.
                packets.close()
                try:
                    packets = self._packets()
                except PacketSourceError as exc:
                    return f"cannot loop the file at its end: {exc}"
        finally:
            # The current pass's source (a file opens a new one per pass).
            packets.close()

    def _pass(
        self,
        nvc: Any,
        torch: Any,
        stream: Any,
        *,
        packets: PacketSource,
        decoder: Any,
        pacer: FilePacer | None,
        progress: _Progress,
    ) -> str | None:
        """Decode packets until there are no more (None) or the camera must reconnect (why)."""
        progress.decoded = 0
        while True:
            # Each read is bounded by read_timeout_s: beat for it before it starts.
            self._beat(self._capture.read_timeout_s)
            try:
                data = packets.read()
            except PacketSourceError as exc:
                return str(exc)
            if data is None:
                return None
            if not data.size:
                # Before the first keyframe: nothing to decode yet.
                continue
            try:
                with self._gate.work(self._waiting):
                    frames = decoder.Decode(packet_data(nvc, data))
            except Exception as exc:
                self._frames.count(self._writer, frames_corrupt=1)
                progress.corrupt_in_row += 1
                if progress.corrupt_in_row >= MAX_CORRUPT_IN_ROW:
                    return f"{progress.corrupt_in_row} undecodable packets in a row: {exc}"
                continue
            progress.corrupt_in_row = 0
            for frame in frames:
                progress.decoded += 1
                wait = 0.0 if pacer is None else max(0.0, pacer.next_due() - time.time())
                self._beat(wait)
                if self._stop.wait(wait):
                    return "stopped"
                image = self._deliver(torch, stream, frame)
                if image is not None and not progress.streaming:
                    progress.streaming = True
                    self._backoff = self._capture.reconnect_initial_s
                    self._send(Streaming(width=image.shape[1], height=image.shape[0]))
            if self._stop.is_set():
                return "stopped"

    def _deliver(self, torch: Any, stream: Any, frame: Any) -> Any:
        """Keep a decoded frame (unless ``max_fps`` skips it); its device image or None."""
        now = time.time()
        return self._copy(torch, stream, frame, now) if self._fps_limit.keep(now) else None

    def _copy(self, torch: Any, stream: Any, frame: Any, capture_ts: float) -> Any:
        """Copy a decoded frame into a free slot and publish it; the slot's image, or None
        when no slot was free (the frame is dropped)."""
        index = self._frames.free_slot(self._writer)
        if index is None:
            return None
        with self._gate.work(self._waiting), torch.cuda.stream(stream):
            decoded = torch.from_dlpack(frame)
            target = self._frames.slot_image(index)
            if target is None or target.shape != decoded.shape:
                target = torch.empty_like(decoded, memory_format=torch.contiguous_format)
            target.copy_(decoded)
            # The decoder reuses its surface, and a batch may read the slot the moment it is
            # published: both need the copy done.
            stream.synchronize()
        self._frames.publish(self._writer, index, target, capture_ts)
        return target


@dataclass(slots=True)
class _Progress:
    """A reader's progress on its current source."""

    streaming: bool = False
    corrupt_in_row: int = 0
    # Frames decoded in the current pass over the source.
    decoded: int = 0


def packet_data(nvc: Any, data: Packet) -> Any:
    """PyNvVideoCodec's ``PacketData`` for an encoded packet: the address and size of its
    bytes, which must stay alive until ``Decode`` returns (it does not copy them first)."""
    packet = nvc.PacketData()
    packet.bsl_data = data.ctypes.data
    packet.bsl = data.size
    return packet
