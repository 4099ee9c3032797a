"""The publisher's counters: what the metrics and ``/healthz`` report about delivery."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.publish.connection import BrokerState
from daemon.publish.outbox import SpoolState


@dataclass(frozen=True, slots=True)
class PublisherCounters:
    """Snapshot of the publisher. Totals count every publish, retained ones included."""

    connected: bool
    published: int  # handed to paho (resends by paho not counted again)
    acknowledged: int  # PUBACK received (QoS 1) or written to the socket (QoS 0)
    inflight: int  # handed to paho, not yet acknowledged
    queued: int  # waiting in memory + spool
    dropped_overflow: int  # oldest messages dropped because a bound was hit (or lost at stop)
    spooled: int  # written to the disk spool (total)
    spool_bytes: int  # current spool size (topic + payload bytes)
    broker: BrokerState = BrokerState.CONNECTED
    broker_cause: str | None = None  # why not connected (DNS, refused, TLS, auth, ...)
    connect_failures: int = 0
    takeover_suspected: bool = False  # another client keeps taking over our client id
    pump_ok: bool = True  # the pump thread runs and its last round did not fail
    spool: SpoolState = SpoolState.OFF
    spool_rejected: int = 0  # spool rows discarded: damaged, or topic outside our own

    @property
    def can_publish(self) -> bool:
        """Messages leave now: connected to the broker and the pump is working."""
        return self.connected and self.pump_ok
