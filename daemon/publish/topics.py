"""MQTT topic names: one place that knows the ``<prefix>/<node>/<camera>/...`` layout."""

from __future__ import annotations

from dataclasses import dataclass

# A topic level must not contain these, or subscribers' filters would match the wrong topics.
_FORBIDDEN = ("/", "+", "#", "\x00")


def _check_level(kind: str, value: str) -> str:
    if not value or any(ch in value for ch in _FORBIDDEN):
        raise ValueError(f"{kind} {value!r} cannot be an MQTT topic level (empty, '/', '+', '#')")
    return value


@dataclass(frozen=True)
class Topics:
    """Topic builder for one node. ``prefix`` may span several levels (``site/edgewatch``)."""

    prefix: str
    node: str

    def __post_init__(self) -> None:
        for level in self.prefix.split("/"):
            _check_level("topic prefix level", level)
        _check_level("node name", self.node)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.node}"

    @property
    def status(self) -> str:
        """Node availability, retained: ``online`` / ``offline`` (the last will)."""
        return f"{self.base}/status"

    def camera(self, camera_id: str, leaf: str) -> str:
        return f"{self.base}/{_check_level('camera id', camera_id)}/{leaf}"

    def detections(self, camera_id: str) -> str:
        return self.camera(camera_id, "detections")

    def state(self, camera_id: str) -> str:
        """Retained camera state (``streaming`` / ``reconnecting`` / ``down`` + reason)."""
        return self.camera(camera_id, "state")

    @property
    def all_states(self) -> str:
        """Subscription filter matching every camera's state topic of this node."""
        return f"{self.base}/+/state"

    def camera_of(self, topic: str) -> str | None:
        """The camera id of one of this node's per-camera topics; None for any other topic."""
        head, sep, rest = topic.partition(self.base + "/")
        parts = rest.split("/")
        return parts[0] if not head and sep and len(parts) == 2 and parts[0] else None

    def stats(self, camera_id: str) -> str:
        return self.camera(camera_id, "stats")
