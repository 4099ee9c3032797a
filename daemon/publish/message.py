"""The unit the outgoing queue and the disk spool store: what one MQTT PUBLISH needs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One queued message. Any message kind goes through the queue and spool as this."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
