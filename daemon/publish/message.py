"""The unit the outgoing queue stores: a topic and its encoded payload."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutMessage:
    topic: str
    payload: bytes
