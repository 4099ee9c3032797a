"""MQTT publisher (paho-mqtt 2.x) that survives broker outages without losing messages.

Threads: paho's network loop (``loop_start``) and one pump thread of ours. API calls only
build a payload and append to the ``Outbox`` (memory, O(1)), so they never block the asyncio
loop. The pump hands messages to paho, at most ``inflight_window`` unacknowledged at a time,
and spills to / replays from the disk spool.

Why our own queue instead of paho's (``max_queued_messages_set``): paho's queue is memory
only, and when it is full it rejects the *newest* message; we need a disk spill and
oldest-first dropping with counts, in one FIFO. Paho keeps only the in-flight window; it
resends that window by itself after a reconnect (before anything newer: the pump waits until
the carried-over window is acknowledged), then the pump continues with the spool and memory.
Delivery is at-least-once (QoS 1): a message whose PUBACK was lost is sent again.

Retained messages (node status, camera state) are "latest wins": they are kept as the newest
payload per topic, never queued or spooled, and all republished on every (re)connect since a
non-persistent broker forgets them when it restarts.

paho calls ``on_publish`` holding its own message lock, so callbacks here only update
counters under our condition and never call back into paho; the pump calls paho without
holding our lock. That ordering makes deadlock impossible.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from daemon.capture.frame import CameraState, FrameMeta
from daemon.config.model import MqttConfig
from daemon.monitor.stats import CameraStats
from daemon.postprocess.yolo import Detections
from daemon.publish.message import OutMessage
from daemon.publish.outbox import Outbox
from daemon.publish.payloads import (
    STATUS_OFFLINE,
    STATUS_ONLINE,
    detections_payload,
    state_payload,
    stats_payload,
)
from daemon.publish.topics import Topics

log = logging.getLogger(__name__)

DEFAULT_INFLIGHT_WINDOW: Final = 64
# paho's reconnect backoff: quick first retry, capped low because the broker is usually local.
RECONNECT_MIN_S: Final = 1
RECONNECT_MAX_S: Final = 5
# While spooling, fsync at most this often (see daemon/publish/spool.py for the policy).
SYNC_INTERVAL_S: Final = 1.0
_MiB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PublisherCounters:
    """Snapshot of the publisher. Totals count every publish, retained ones included."""

    connected: bool
    published: int  # handed to paho (resends by paho not counted again)
    acknowledged: int  # PUBACK received (QoS 1) or written to the socket (QoS 0)
    inflight: int  # handed to paho, not yet acknowledged
    queued: int  # waiting in memory + spool
    dropped_overflow: int  # oldest messages dropped because a bound was hit
    spooled: int  # written to the disk spool (total)
    spool_bytes: int  # current spool size on disk


class MqttPublisher:
    """Publishes detections, stats, retained camera state and node availability."""

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
        )
        self._cond = threading.Condition()
        # Everything below is guarded by _cond.
        self._connected = False
        self._carry_over = False  # waiting for paho's resent window after a reconnect
        self._closing = False
        self._inflight = 0
        self._published = 0
        self._acknowledged = 0
        self._retained: dict[str, bytes] = {}  # topic -> newest payload (b"" clears)
        self._retained_dirty: set[str] = set()
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
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
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
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
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
        """Drain (bounded), publish ``offline`` retained, disconnect; spool what is left."""
        client, pump = self._client, self._pump
        if client is None or pump is None:
            return
        deadline = time.monotonic() + timeout
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
        self._outbox.close()
        counters = self.counters()
        log.info(
            "mqtt publisher stopped",
            extra={
                "unacknowledged": counters.inflight,
                "queued": counters.queued,
                "persisted_to_spool": self._cfg.queue.spool_dir is not None,
            },
        )
        self._client = None
        self._pump = None

    # -- API (any thread, non-blocking) ----------------------------------------------------
    def publish_detections(
        self, meta: FrameMeta, detections: Detections, names: Sequence[str], publish_ts: float
    ) -> None:
        """Queue one frame's detections (at-least-once)."""
        self._enqueue(
            OutMessage(
                self.topics.detections(meta.camera_id),
                detections_payload(meta, detections, names, publish_ts),
            )
        )

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue any message (at-least-once, through the same outbox and spool)."""
        self._enqueue(OutMessage(topic, payload))

    def publish_stats(self, camera_id: str, stats: CameraStats) -> None:
        """Queue one camera's interval stats."""
        self._enqueue(OutMessage(self.topics.stats(camera_id), stats_payload(stats)))

    def publish_state(self, camera_id: str, state: CameraState, reason: str | None) -> None:
        """Set the retained state of a camera (latest wins; republished on reconnect)."""
        self._set_retained(
            self.topics.state(camera_id), state_payload(camera_id, state, reason, time.time())
        )

    def remove_camera(self, camera_id: str) -> None:
        """Clear the camera's retained state on the broker (empty retained payload)."""
        self._set_retained(self.topics.state(camera_id), b"")

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    def counters(self) -> PublisherCounters:
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
            )

    def _enqueue(self, message: OutMessage) -> None:
        self._outbox.put(message)
        with self._cond:
            self._cond.notify()

    def _set_retained(self, topic: str, payload: bytes) -> None:
        with self._cond:
            self._retained[topic] = payload
            self._retained_dirty.add(topic)
            self._cond.notify()

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
            log.warning("mqtt connection refused", extra={"reason": str(reason)})
            return
        with self._cond:
            self._connected = True
            # paho resends its unacknowledged window right after this callback returns.
            self._carry_over = self._inflight > 0
            self._retained_dirty = set(self._retained)
            self._inflight += 1
            self._published += 1
            self._cond.notify_all()
        client.publish(self.topics.status, STATUS_ONLINE, qos=1, retain=True)
        log.info("mqtt connected", extra={"broker": f"{self._cfg.host}:{self._cfg.port}"})

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Any,
    ) -> None:
        with self._cond:
            was_connected = self._connected
            self._connected = False
            if self._cfg.qos == 0:
                # QoS 0 messages not yet written are gone; paho will not report them.
                self._inflight = 0
            self._cond.notify_all()
        if was_connected and not self._closing:
            log.warning("mqtt disconnected; buffering", extra={"reason": str(reason)})

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, _reason: ReasonCode, _properties: Any
    ) -> None:
        with self._cond:
            self._inflight = max(0, self._inflight - 1)
            self._acknowledged += 1
            if self._inflight == 0:
                self._carry_over = False
            self._cond.notify_all()

    # -- pump thread ---------------------------------------------------------------------
    def _can_send(self) -> bool:
        return self._connected and not self._carry_over and self._inflight < self._window

    def _has_work(self) -> bool:
        if self._closing or self._outbox.needs_spill():
            return True
        return self._can_send() and (bool(self._retained_dirty) or self._outbox.depth > 0)

    def _run_pump(self) -> None:
        self._outbox.open()
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
            messages = self._outbox.take(budget - len(retained))
            with self._cond:
                used = len(retained) + len(messages)
                self._inflight = max(0, self._inflight - (budget - used))
                self._published += used
            for topic, payload in retained:
                self._hand_to_paho(client, topic, payload, retain=True)
            for msg in messages:
                self._hand_to_paho(client, msg.topic, msg.payload, retain=False)
            now = time.monotonic()
            if now - last_sync >= SYNC_INTERVAL_S:
                self._outbox.sync()
                last_sync = now

    def _hand_to_paho(self, client: mqtt.Client, topic: str, payload: bytes, retain: bool) -> None:
        try:
            client.publish(topic, payload, qos=self._cfg.qos, retain=retain)
        except ValueError as exc:
            # Only an oversized payload gets here (topics are validated): drop it, keep going.
            log.error("mqtt message rejected", extra={"topic": topic, "error": str(exc)})
            with self._cond:
                self._inflight = max(0, self._inflight - 1)
            self._outbox.count_dropped(1)
