"""The broker connection as an operator sees it: state, cause, and what to log when.

paho retries forever and, on its own, says only ``Client is not connected``. This tracker
turns its callbacks into one state (``connecting`` / ``connected`` / ``unreachable`` /
``refused`` / ``disconnected``) with a readable cause, logged once per change rather than
once per retry, and it spots another client taking over our client id: with MQTT 3.1.1 the
broker just closes the older connection, so two boxes with the same node name show up as
connections dropped within seconds of being made, over and over.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Final

log = logging.getLogger(__name__)

# A connection closed by the broker sooner than this after CONNACK counts as "cut short".
SHORT_CONNECTION_S: Final = 10.0
# This many cut-short connections within the window: someone else uses our client id.
TAKEOVER_DROPS: Final = 3
TAKEOVER_WINDOW_S: Final = 60.0


class BrokerState(str, Enum):
    CONNECTING = "connecting"  # no attempt finished yet
    CONNECTED = "connected"
    UNREACHABLE = "unreachable"  # DNS, TCP or TLS failed
    REFUSED = "refused"  # the broker answered CONNACK with an error (auth, client id)
    DISCONNECTED = "disconnected"  # was connected, connection lost


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    state: BrokerState
    cause: str | None  # why it is not connected; None when connected
    connect_failures: int  # attempts that failed (DNS, TCP, TLS, CONNACK refusal)
    takeover_suspected: bool  # another client keeps taking over our client id


def describe_connect_error(exc: BaseException | None) -> str:
    """An operator-readable cause for a failed connection attempt."""
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {exc.verify_message or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listening on the broker's port?)"
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    return "connection failed" if exc is None else f"{type(exc).__name__}: {exc}"


class ConnectionTracker:
    """Thread-safe; paho's callbacks feed it from paho's thread."""

    def __init__(self, broker: str, client_id: str) -> None:
        self._broker = broker
        self._client_id = client_id
        self._lock = threading.Lock()
        self._state = BrokerState.CONNECTING
        self._cause: str | None = None
        self._failures = 0
        self._connected_at: float | None = None
        self._cut_short: deque[float] = deque()
        self._takeover = False

    def status(self) -> BrokerStatus:
        with self._lock:
            held = self._connected_at is not None and (
                time.monotonic() - self._connected_at >= SHORT_CONNECTION_S
            )
            if held:
                # The other client went away: our connection holds again.
                self._cut_short.clear()
                self._takeover = False
            return BrokerStatus(self._state, self._cause, self._failures, self._takeover)

    def connect_failed(self, exc: BaseException | None) -> None:
        """A TCP/DNS/TLS attempt failed (paho's ``on_connect_fail``)."""
        self._change(BrokerState.UNREACHABLE, describe_connect_error(exc), failed=True)

    def refused(self, reason: str) -> None:
        """The broker refused the CONNECT (bad credentials, not authorized, ...)."""
        self._change(BrokerState.REFUSED, f"broker refused the connection: {reason}", failed=True)

    def connected(self) -> None:
        with self._lock:
            self._connected_at = time.monotonic()
        self._change(BrokerState.CONNECTED, None, failed=False)

    def disconnected(self, reason: str, expected: bool) -> None:
        """The connection ended; ``expected`` when we closed it ourselves."""
        now = time.monotonic()
        with self._lock:
            lasted = None if self._connected_at is None else now - self._connected_at
            self._connected_at = None
            if not expected and lasted is not None:
                self._note_drop(now, lasted)
            state = self._state
        if expected or state is BrokerState.REFUSED:
            return  # nothing to add: we closed it, or the refusal already says why
        if state is BrokerState.CONNECTED:
            self._change(BrokerState.DISCONNECTED, f"connection lost: {reason}", failed=False)
        else:
            self._change(
                BrokerState.UNREACHABLE,
                f"closed by the broker before it accepted us ({reason}): TLS or port mismatch?",
                failed=True,
            )

    def _note_drop(self, now: float, lasted: float) -> None:
        if lasted >= SHORT_CONNECTION_S:
            # A connection that held is the normal case: start counting again.
            self._cut_short.clear()
            self._takeover = False
            return
        self._cut_short.append(now)
        while self._cut_short and now - self._cut_short[0] > TAKEOVER_WINDOW_S:
            self._cut_short.popleft()
        if len(self._cut_short) >= TAKEOVER_DROPS and not self._takeover:
            self._takeover = True
            log.error(
                "mqtt broker keeps closing our connection right after it is made: another "
                "client is probably using the same client id (two nodes with the same node "
                "name?); give each node its own 'node' or 'mqtt.client_id'",
                extra={
                    "broker": self._broker,
                    "client_id": self._client_id,
                    "drops": len(self._cut_short),
                    "window_s": TAKEOVER_WINDOW_S,
                },
            )

    def _change(self, state: BrokerState, cause: str | None, failed: bool) -> None:
        with self._lock:
            if failed:
                self._failures += 1
            changed = (state, cause) != (self._state, self._cause)
            self._state, self._cause = state, cause
        if not changed:
            return
        extra = {"broker": self._broker, "state": state.value}
        if state is BrokerState.CONNECTED:
            log.info("mqtt connected", extra=extra)
        else:
            log.warning("mqtt broker not available; buffering", extra={**extra, "cause": cause})
