"""The channel between a pipeline worker process and the service: both of its ends.

A worker's pipeline publishes to a ``RelaySink``: it builds each payload where the detections
are (JSON off the service's GIL, with the publisher's own code: ``daemon.publish.queued``) and
sends the finished MQTT message over a pipe. The service
hands what arrives to its one ``Publisher`` (``deliver``), so there is still one broker
session, one outbox and spool, one retained state per camera and one epoch registry: a
subscriber cannot tell how many workers there are. Everything else a worker reports (ready,
its health, its metrics and stats) is a ``WorkerStatus`` for the pool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

from daemon.capture.state import CameraState
from daemon.config.model import CameraConfig
from daemon.monitor.merged import Snapshot
from daemon.monitor.metrics import Health
from daemon.publish.camera_stats import CameraStats
from daemon.publish.queued import QueuedMessages
from daemon.publish.sink import Publisher
from daemon.publish.topics import Topics

log = logging.getLogger(__name__)


# -- worker -> service ---------------------------------------------------------------------


@dataclass(frozen=True)
class Messages:
    """Finished MQTT messages, ``(topic, payload)``, to queue in order."""

    messages: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class CameraStarted:
    """A camera's reader starts: the service answers with the camera's new epoch."""

    camera_id: str


@dataclass(frozen=True)
class CameraRemoved:
    camera_id: str


@dataclass(frozen=True)
class StateChanged:
    camera_id: str
    state: CameraState
    reason: str | None


@dataclass(frozen=True)
class WorkerStatus:
    """What a worker says about itself once a second (and once more when it stops)."""

    # Warm for its cameras' batch shapes (the service's READY waits for every worker).
    ready: bool
    health: Health
    metrics: Snapshot
    stats: dict[str, CameraStats]


# -- service -> worker ---------------------------------------------------------------------


@dataclass(frozen=True)
class AddCamera:
    camera: CameraConfig


@dataclass(frozen=True)
class RemoveCamera:
    camera_id: str


@dataclass(frozen=True)
class Stop:
    """Stop taking batches, drain the in-flight ones, report a last status and exit."""


WorkerMessage = Messages | CameraStarted | CameraRemoved | StateChanged | WorkerStatus
Command = AddCamera | RemoveCamera | Stop


class RelaySink(QueuedMessages):
    """The ``Sink`` of a pipeline in a worker process (any thread; sends never wait on the
    broker, only on the pipe, which the service drains continuously)."""

    def __init__(self, conn: Connection, topics: Topics) -> None:
        self._conn = conn
        self.topics = topics
        self._lock = threading.Lock()
        self._epochs: dict[str, int] = {}
        self._lost = False

    def send(self, message: WorkerMessage) -> None:
        """Send one message to the service; once the service is gone, nothing more is sent
        (the worker stops when its command pipe closes)."""
        with self._lock:
            self._send_locked(message)

    def _send_locked(self, message: WorkerMessage) -> None:
        if self._lost:
            return
        try:
            self._conn.send(message)
        except OSError as exc:
            self._lost = True
            log.error("the service is gone; results are dropped", extra={"error": str(exc)})

    def start_camera(self, camera_id: str) -> int:
        """Ask the service for the camera's new epoch (its registry is the only one)."""
        with self._lock:
            self._send_locked(CameraStarted(camera_id))
            try:
                epoch = int(self._conn.recv())
            except (EOFError, OSError):
                self._lost = True
                epoch = 0
        self._epochs[camera_id] = epoch
        return epoch

    def remove_camera(self, camera_id: str) -> None:
        self._epochs.pop(camera_id, None)
        self.send(CameraRemoved(camera_id))

    def publish_state(self, camera_id: str, state: CameraState, reason: str | None) -> None:
        self.send(StateChanged(camera_id, state, reason))

    def _current_epoch(self, camera_id: str) -> int:
        return self._epochs.get(camera_id, 0)

    def _queue(self, messages: Sequence[tuple[str, bytes]]) -> None:
        self.send(Messages(tuple(messages)))


def deliver(message: WorkerMessage, publisher: Publisher, conn: Connection) -> bool:
    """The service's side: hand a worker's publishing message to ``publisher`` (answering
    on ``conn`` where the worker waits). False for a ``WorkerStatus``, which is the pool's."""
    if isinstance(message, Messages):
        for topic, payload in message.messages:
            publisher.publish_message(topic, payload)
    elif isinstance(message, CameraStarted):
        conn.send(publisher.start_camera(message.camera_id))
    elif isinstance(message, StateChanged):
        publisher.publish_state(message.camera_id, message.state, message.reason)
    elif isinstance(message, CameraRemoved):
        publisher.remove_camera(message.camera_id)
    else:
        return False
    return True
