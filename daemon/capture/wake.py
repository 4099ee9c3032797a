"""Frame arrivals: readers say "a frame was published", the dispatch loop waits for that.

One channel per pipeline: a socket pair. Every reader of the pipeline's cameras sends one
byte after each frame it publishes (a reader process gets its ``WakeSender`` at spawn, an
NVDEC reader thread shares the pipeline's). The event loop watches the other end
(``loop.add_reader``) and wakes ``FrameArrivals.wait``. A byte says only "look again", so
a full socket (the loop has not looked yet: it is signalled already) or a closed one (the
pipeline is gone) is ignored and sending never blocks.

Imported by reader processes: standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Final

# Bytes drained per readiness callback; more wait for the next one, which comes at once.
_DRAIN_BYTES: Final = 4096
# Never block a reader, and never let a closed channel raise SIGPIPE in one.
_SEND_FLAGS: Final = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL


class WakeSender:
    """A reader's end of the channel; picklable into a spawned process (its socket is
    passed as a file descriptor by ``multiprocessing``)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def signal(self) -> None:
        """Say a frame was published (any thread or process; never blocks or raises)."""
        with contextlib.suppress(OSError):
            self._sock.send(b"\x01", _SEND_FLAGS)

    def close(self) -> None:
        """Close this end (idempotent); later ``signal`` calls do nothing."""
        self._sock.close()


class FrameArrivals:
    """The pipeline's end: ``sender`` goes to every reader; the loop waits in ``wait``.

    ``clear``, ``wait``, ``watch`` and ``close`` run on the event loop thread."""

    def __init__(self) -> None:
        self._receiver, sender = socket.socketpair()
        self._receiver.setblocking(False)
        self.sender = WakeSender(sender)
        self._arrived = False
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Notice arrivals on ``loop`` until ``close``."""
        loop.add_reader(self._receiver.fileno(), self._drain)
        self._loop = loop

    def clear(self) -> None:
        """Forget earlier arrivals: the caller is about to look at every camera."""
        self._arrived = False

    async def wait(self, timeout_s: float) -> bool:
        """Return once a frame arrived since the last ``clear``, or after ``timeout_s``;
        whether one arrived."""
        if self._arrived:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout_s, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return self._arrived

    def close(self) -> None:
        """Stop watching and close both ends (idempotent). Readers still holding a copy of
        the sending end keep it until they exit; their signals go nowhere."""
        if self._loop is not None:
            self._loop.remove_reader(self._receiver.fileno())
            self._loop = None
        self._receiver.close()
        self.sender.close()

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._receiver.recv(_DRAIN_BYTES)
        self._arrived = True
        if self._waiter is not None:
            _resolve(self._waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
