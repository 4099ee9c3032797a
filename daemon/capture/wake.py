"""Frame arrivals: readers say "a frame was published", the dispatch loop waits for that.

One channel per pipeline: a socket pair. Every reader of the pipeline's cameras sends one
byte after each frame it publishes (a reader process gets its ``WakeSender`` at spawn, an
NVDEC reader thread shares the pipeline's). The event loop watches the other end while it
waits (``loop.add_reader``), so an arrival wakes ``FrameArrivals.wait``. A byte says only
"look again", so a full socket (the loop has not looked yet: it is signalled already) or a
closed one (the pipeline is gone) is ignored and sending never blocks.

Imported by reader processes: standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Final

# Bytes read per ``recv`` while draining the channel.
_DRAIN_BYTES: Final = 4096
# Never block a reader, and never let a closed channel raise SIGPIPE in one.
_SEND_FLAGS: Final = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL


class WakeSender:
    """A reader's end of the channel; picklable into a spawned process (its socket is
    passed as a file descriptor by ``multiprocessing``)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def signal(self) -> None:
        """Say a frame was published (never blocks or raises). Not to race ``close``: an
        NVDEC reader signals under its store's lock, closed before the channel is."""
        with contextlib.suppress(OSError):
            self._sock.send(b"\x01", _SEND_FLAGS)

    def close(self) -> None:
        """Close this end (idempotent); later ``signal`` calls do nothing."""
        self._sock.close()


class FrameArrivals:
    """The pipeline's end: ``sender`` goes to every reader; the loop waits in ``wait``.

    ``clear``, ``wait``, ``notify`` and ``close`` run on the event loop thread. The loop
    watches the channel only inside ``wait``: bytes sent while it is busy elsewhere (all
    batches in flight) cost it nothing until it next looks, and ``clear`` drops them."""

    def __init__(self) -> None:
        self._receiver, sender = socket.socketpair()
        self._receiver.setblocking(False)
        self.sender = WakeSender(sender)
        self._arrived = False
        self._waiter: asyncio.Future[None] | None = None

    def clear(self) -> None:
        """Forget earlier arrivals: the caller is about to look at every camera."""
        self._drain()
        self._arrived = False

    async def wait(self, timeout_s: float) -> bool:
        """Return once a frame arrived (or ``notify`` was called) since the last ``clear``,
        or after ``timeout_s``; whether one did. Always yields to the loop."""
        if self._arrived or self._drain():
            await asyncio.sleep(0)
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        fd = self._receiver.fileno()
        loop.add_reader(fd, self._on_readable)
        timer = loop.call_later(timeout_s, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            loop.remove_reader(fd)
            self._waiter = None
        return self._arrived

    def notify(self) -> None:
        """Wake ``wait`` as an arrival would: something other than a frame changed what
        can be dispatched (a frame size warmed, a stop)."""
        self._arrived = True
        if self._waiter is not None:
            _resolve(self._waiter)

    def close(self) -> None:
        """Close both ends (idempotent). Readers still holding a copy of the sending end
        keep it until they exit; their signals go nowhere."""
        self._receiver.close()
        self.sender.close()

    def _drain(self) -> bool:
        """Read every byte waiting; whether there was one."""
        got = False
        with contextlib.suppress(OSError):  # BlockingIOError: nothing (more) to read
            while self._receiver.recv(_DRAIN_BYTES):
                got = True
        return got

    def _on_readable(self) -> None:
        if self._drain():
            self.notify()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
