"""MQTT publisher (paho-mqtt 2.x) that survives broker outages without losing messages.

Threads: paho's network loop (``loop_start``) and one pump thread of ours. API calls only
build a payload and append to the ``Outbox`` (memory, O(1)), so they never block the asyncio
loop. The pump hands messages to paho, at most ``inflight_window`` unacknowledged at a time,
and spills to / replays from the disk spool. The pump is supervised: an unexpected error is
logged with its traceback and the pump starts again; while it keeps failing, ``pump_ok`` is
false, which the daemon's health (and so the systemd watchdog) reflects.

Why our own queue instead of paho's (``max_queued_messages_set``): paho's queue is memory
only, and when it is full it rejects the *newest* message; we need a disk spill and
oldest-first dropping with counts, in one FIFO. Paho keeps only the in-flight window; it
resends that window by itself after a reconnect (before anything newer: the pump waits until
the carried-over window is acknowledged), then the pump continues with the spool and memory.
Delivery is at-least-once (QoS 1): a message whose PUBACK was lost is sent again. We keep a
copy of every unacknowledged message (by message id), so a stop during an outage persists
the in-flight window to the spool too, in front of the rest.

Retained messages (node status, camera state) are "latest wins": they are kept as the newest
payload per topic, never queued or spooled, and all republished on every (re)connect since a
non-persistent broker forgets them when it restarts. On connect the publisher also reads the
retained camera states under its own node and clears those of cameras it does not run (a
camera removed while the daemon was stopped); on a clean stop every camera's state becomes
``down`` before ``offline``.

paho calls ``on_publish`` holding its own message lock, so callbacks here only update
counters under our condition and never call back into paho; the pump calls paho without
holding our lock. That ordering makes deadlock impossible.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from daemon.capture.state import CameraState
from daemon.config.model import MqttConfig
from daemon.publish.connection import ConnectionTracker
from daemon.publish.counters import PublisherCounters
from daemon.publish.epochs import CameraEpochs
from daemon.publish.message import OutMessage
from daemon.publish.outbox import Outbox
from daemon.publish.payloads import (
    STATUS_OFFLINE,
    STATUS_ONLINE,
    state_payload,
)
from daemon.publish.queued import QueuedMessages
from daemon.publish.topics import Topics

log = logging.getLogger(__name__)

DEFAULT_INFLIGHT_WINDOW: Final = 64
# paho's reconnect backoff: quick first retry, capped low because the broker is usually local.
RECONNECT_MIN_S: Final = 1
RECONNECT_MAX_S: Final = 5
# While spooling, fsync at most this often (see daemon/publish/spool.py for the policy).
SYNC_INTERVAL_S: Final = 1.0
# After an unexpected pump error, wait this long before starting it again (no hot loop).
PUMP_RESTART_S: Final = 1.0
# The reason in each camera's retained state after a clean stop.
STOPPED_REASON: Final = "node stopped"
_MiB: Final = 1024 * 1024


class MqttPublisher(QueuedMessages):
    """Publishes detections, stats, events, snapshots, retained camera state and node
    availability: the daemon's ``Sink`` (``daemon.publish.sink``) over MQTT."""

    def __init__(
        self, config: MqttConfig, node: str, inflight_window: int = DEFAULT_INFLIGHT_WINDOW
    ) -> None:
        if config.qos not in (0, 1, 2):
            raise ValueError(f"mqtt.qos must be 0, 1 or 2, got {config.qos}")
        self._cfg = config
        self.topics = Topics(config.topic_prefix, node)
        self._client_id = config.client_id or f"edgewatch-{node}"
        self._window = max(1, inflight_window)
        self._outbox = Outbox(
            config.queue.max_memory_messages,
            config.queue.spool_dir,
            config.queue.spool_max_mb * _MiB,
            self.topics.base + "/",
        )
        self._link = ConnectionTracker(f"{config.host}:{config.port}", self._client_id)
        self._epochs = CameraEpochs()
        self._cond = threading.Condition()
        # Everything below is guarded by _cond.
        self._connected = False
        self._carry_over = False  # waiting for paho's resent window after a reconnect
        self._closing = False
        self._inflight = 0
        self._published = 0
        self._acknowledged = 0
        self._pump_failing = False
        self._retained: dict[str, bytes] = {}  # topic -> newest payload (b"" clears)
        self._retained_dirty: set[str] = set()
        # Messages handed to paho and not yet acknowledged, by message id (send order): queue
        # messages with their spool row, None for retained ones; and ids paho acknowledged
        # before publish() returned.
        self._unacked: dict[int, tuple[OutMessage, int | None] | None] = {}
        self._acked_early: set[int] = set()
        self._client: mqtt.Client | None = None
        self._pump: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (paho's thread) and start the pump. Returns at once."""
        if self._client is not None:
            raise RuntimeError("publisher already started")
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=mqtt.MQTTv311,
            # Our outbox holds the backlog; a broker-side session adds nothing for a publisher.
            clean_session=True,
        )
        # One logger per client id, so the filter below sees this publisher's state only.
        paho_log = logging.getLogger(f"{__name__}.paho.{self._client_id}")
        paho_log.addFilter(self._quiet_while_down)
        client.enable_logger(paho_log)
        client.will_set(self.topics.status, STATUS_OFFLINE, qos=1, retain=True)
        if self._cfg.username:
            password = self._cfg.password.reveal() if self._cfg.password else None
            client.username_pw_set(self._cfg.username, password)
        if self._cfg.tls is not None:
            tls = self._cfg.tls
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            client.tls_insecure_set(tls.insecure)
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
        client.max_inflight_messages_set(self._window)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client
        self._pump = threading.Thread(target=self._run_pump, name="mqtt-pump", daemon=True)
        self._pump.start()
        client.connect_async(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s)
        client.loop_start()
        log.info(
            "mqtt publisher started",
            extra={
                "broker": f"{self._cfg.host}:{self._cfg.port}",
                "client_id": self._client_id,
                "tls": self._cfg.tls is not None,
                "auth": bool(self._cfg.username),
            },
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Mark every camera ``down``, drain (bounded), publish ``offline`` retained,
        disconnect; spool what is left, the unacknowledged window first."""
        client, pump = self._client, self._pump
        if client is None or pump is None:
            return
        deadline = time.monotonic() + timeout
        now = time.time()
        for camera_id, epoch in self._epochs.snapshot().items():
            self._set_retained(
                self.topics.state(camera_id),
                state_payload(camera_id, epoch, CameraState.DOWN, STOPPED_REASON, now),
            )
        with self._cond:
            # Leave a fifth of the time for `offline` and the disconnect.
            self._cond.wait_for(
                lambda: (
                    not self._connected
                    or (
                        self._outbox.depth == 0 and not self._retained_dirty and self._inflight == 0
                    )
                ),
                timeout=max(0.0, (deadline - time.monotonic()) * 0.8),
            )
            connected = self._connected
            self._closing = True
            self._cond.notify_all()
        pump.join(max(0.0, deadline - time.monotonic()))
        if connected:
            with self._cond:
                self._inflight += 1
                self._published += 1
            info = client.publish(self.topics.status, STATUS_OFFLINE, qos=1, retain=True)
            self._track(info, None)
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("mqtt offline status not confirmed", extra={"error": str(exc)})
        # paho 2.1's network thread may run one more loop after our clean disconnect and log
        # "Client is not connected" at ERROR (a race in loop_forever); nothing it could say
        # from here on is actionable, so it must not reach an operator's error alerts.
        client.disable_logger()
        client.disconnect()
        client.loop_stop()
        logging.getLogger(f"{__name__}.paho.{self._client_id}").removeFilter(self._quiet_while_down)
        with self._cond:
            unacknowledged = [sent[0] for sent in self._unacked.values() if sent is not None]
        queued = self._outbox.depth
        lost = self._outbox.close(unacknowledged)
        extra = {
            "unacknowledged": len(unacknowledged),
            "queued": queued,
            "persisted_to_spool": len(unacknowledged) + queued - lost,
            "spool": self._outbox.state.value,
            "lost": lost,
        }
        if lost:
            log.warning("mqtt publisher stopped; undelivered messages lost", extra=extra)
        else:
            log.info("mqtt publisher stopped", extra=extra)
        self._client = None
        self._pump = None

    # -- API (any thread, non-blocking) ----------------------------------------------------
    def start_camera(self, camera_id: str) -> int:
        """A camera's frame counter starts (again): returns its new epoch for payloads."""
        return self._epochs.start(camera_id)

    def publish_state(self, camera_id: str, state: CameraState, reason: str | None) -> None:
        """Set the retained state of a camera (latest wins; republished on reconnect)."""
        epoch = self._epochs.current(camera_id)
        self._set_retained(
            self.topics.state(camera_id),
            state_payload(camera_id, epoch, state, reason, time.time()),
        )

    def remove_camera(self, camera_id: str) -> None:
        """Clear the camera's retained state on the broker (empty retained payload)."""
        self._epochs.forget(camera_id)
        self._set_retained(self.topics.state(camera_id), b"")

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    @property
    def pump_ok(self) -> bool:
        """False once the pump thread died or while it keeps failing (health, watchdog)."""
        pump = self._pump
        with self._cond:
            return pump is not None and pump.is_alive() and not self._pump_failing

    def counters(self) -> PublisherCounters:
        link = self._link.status()
        pump_ok = self.pump_ok
        with self._cond:
            return PublisherCounters(
                connected=self._connected,
                published=self._published,
                acknowledged=self._acknowledged,
                inflight=self._inflight,
                queued=self._outbox.depth,
                dropped_overflow=self._outbox.dropped,
                spooled=self._outbox.spooled,
                spool_bytes=self._outbox.spool_bytes,
                broker=link.state,
                broker_cause=link.cause,
                connect_failures=link.connect_failures,
                takeover_suspected=link.takeover_suspected,
                pump_ok=pump_ok,
                spool=self._outbox.state,
                spool_rejected=self._outbox.rejected,
            )

    def publish_message(self, topic: str, payload: bytes) -> None:
        """Queue an already built message (at-least-once): a worker process's payload."""
        self._queue(((topic, payload),))

    def _current_epoch(self, camera_id: str) -> int:
        return self._epochs.current(camera_id)

    def _queue(self, messages: Sequence[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            self._outbox.put(OutMessage(topic, payload, self._cfg.qos))
        with self._cond:
            self._cond.notify()

    def _set_retained(self, topic: str, payload: bytes) -> None:
        with self._cond:
            self._retained[topic] = payload
            self._retained_dirty.add(topic)
            self._cond.notify()

    def _quiet_while_down(self, record: logging.LogRecord) -> bool:
        """paho repeats ``Client is not connected`` (ERROR) on every retry while the broker is
        away; the connection tracker already said why, once. Those lines go to DEBUG."""
        # A plain read, no lock: paho may log while holding its own locks.
        if record.levelno > logging.INFO and not self._connected:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True

    # -- paho callbacks (paho's thread) ------------------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Any,
    ) -> None:
        if reason.is_failure:
            self._link.refused(str(reason))
            return
        with self._cond:
            self._connected = True
            # paho resends its unacknowledged window right after this callback returns.
            self._carry_over = self._inflight > 0
            self._retained_dirty = set(self._retained)
            self._inflight += 1
            self._published += 1
            self._cond.notify_all()
        self._link.connected()
        self._track(client.publish(self.topics.status, STATUS_ONLINE, qos=1, retain=True), None)
        # The broker's retained camera states under our node: stale ones are cleared.
        client.subscribe(self.topics.all_states, qos=0)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho calls this from inside its ``except OSError`` around the connect attempt, so
        # the exception being handled is the cause (DNS, refused, TLS); paho does not pass it.
        self._link.connect_failed(sys.exc_info()[1])

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Any,
    ) -> None:
        gone: list[tuple[OutMessage, int | None] | None] = []
        with self._cond:
            self._connected = False
            closing = self._closing
            if self._cfg.qos == 0:
                # QoS 0 messages not yet written are gone; paho will not report them.
                self._inflight = 0
                gone = list(self._unacked.values())
                self._unacked.clear()
                self._acked_early.clear()
            self._cond.notify_all()
        for sent in gone:
            if sent is not None:
                self._outbox.acknowledged(sent[1])  # their spool rows may go
        self._link.disconnected(str(reason), expected=closing)

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: ReasonCode, _props: Any
    ) -> None:
        with self._cond:
            self._inflight = max(0, self._inflight - 1)
            self._acknowledged += 1
            if self._inflight == 0:
                self._carry_over = False
            if mid in self._unacked:
                sent = self._unacked.pop(mid)
            else:
                sent = None
                self._acked_early.add(mid)
            self._cond.notify_all()
        if sent is not None:
            self._outbox.acknowledged(sent[1])

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Only retained copies matter (sent once, right after our subscription): live ones
        # are our own state updates coming back.
        if not msg.retain or not msg.payload:
            return
        camera_id = self.topics.camera_of(msg.topic)
        if camera_id is not None and camera_id not in self._epochs.snapshot():
            log.info(
                "clearing retained state of a camera not configured", extra={"camera": camera_id}
            )
            self._set_retained(msg.topic, b"")

    def _track(
        self, info: mqtt.MQTTMessageInfo, sent: tuple[OutMessage, int | None] | None
    ) -> None:
        """Remember a message handed to paho until its acknowledgement (by message id)."""
        with self._cond:
            acked = info.mid in self._acked_early
            if acked:
                self._acked_early.discard(info.mid)
            else:
                self._unacked[info.mid] = sent
        if acked and sent is not None:
            self._outbox.acknowledged(sent[1])

    # -- pump thread ---------------------------------------------------------------------
    def _can_send(self) -> bool:
        return self._connected and not self._carry_over and self._inflight < self._window

    def _has_work(self) -> bool:
        if self._closing or self._outbox.needs_spill():
            return True
        return self._can_send() and (bool(self._retained_dirty) or self._outbox.depth > 0)

    def _run_pump(self) -> None:
        """Run the pump; on an unexpected error log it, flag it, and run it again."""
        while True:
            try:
                self._outbox.open()
                self._pump_rounds()
                return
            except Exception:
                log.exception("mqtt pump failed; restarting it")
                with self._cond:
                    self._pump_failing = True
                    # What the failed round reserved was never handed to paho.
                    self._inflight = len(self._unacked)
                    if self._cond.wait_for(lambda: self._closing, timeout=PUMP_RESTART_S):
                        return

    def _pump_rounds(self) -> None:
        client = self._client
        assert client is not None
        last_sync = time.monotonic()
        while True:
            with self._cond:
                self._cond.wait_for(self._has_work, timeout=SYNC_INTERVAL_S)
                if self._closing:
                    return
                budget = self._window - self._inflight if self._can_send() else 0
                retained = [(t, self._retained[t]) for t in list(self._retained_dirty)[:budget]]
                self._retained_dirty.difference_update(t for t, _ in retained)
                for topic, payload in retained:
                    if not payload:
                        del self._retained[topic]  # a clear is sent once, then forgotten
                # Reserve the budget before publishing: an ack may arrive before publish() returns.
                self._inflight += budget
            if self._outbox.needs_spill():
                self._outbox.spill()
            taken = self._outbox.take(budget - len(retained))
            with self._cond:
                used = len(retained) + len(taken)
                self._inflight = max(0, self._inflight - (budget - used))
                self._published += used
            for topic, payload in retained:
                message = OutMessage(topic, payload, self._cfg.qos, retain=True)
                self._hand_to_paho(client, message, queued=False)
            for message, row in taken:
                self._hand_to_paho(client, message, row=row)
            self._outbox.release()
            now = time.monotonic()
            if now - last_sync >= SYNC_INTERVAL_S:
                self._outbox.sync()
                last_sync = now
            with self._cond:
                self._pump_failing = False

    def _hand_to_paho(
        self, client: mqtt.Client, message: OutMessage, row: int | None = None, queued: bool = True
    ) -> None:
        """Publish one message; a queued one (not "latest wins" state) is kept until its
        acknowledgement, so a stop can persist it."""
        try:
            info = client.publish(
                message.topic, message.payload, qos=message.qos, retain=message.retain
            )
        except ValueError as exc:
            # paho refuses the message itself (oversized payload, bad QoS): drop it, go on.
            log.error("mqtt message rejected", extra={"topic": message.topic, "error": str(exc)})
            with self._cond:
                self._inflight = max(0, self._inflight - 1)
            self._outbox.count_dropped(1)
            self._outbox.acknowledged(row)
            return
        self._track(info, (message, row) if queued else None)
