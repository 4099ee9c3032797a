"""What a hot reload changes: which cameras to start, stop or restart.

Only cameras are applied live. Every other section needs a process restart, because the
objects built from it live as long as the process:

- ``model``: the loaded backend, its batch buffer shape and the TensorRT engine;
- ``mqtt``: the client session, its last will and the outgoing queue/spool;
- ``monitoring``: the bound metrics HTTP port;
- ``capture``: timeouts and buffer sizes baked into every running reader;
- ``node``: the topic level under which every message and retained state is published.

``CameraDiff.restart_required`` names the sections that differ so the daemon can log that their
new values wait for a restart, while it applies the camera changes at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from daemon.config.model import AppConfig, CameraConfig

_RESTART_SECTIONS: Final = ("model", "mqtt", "monitoring", "capture", "tracking", "node")


@dataclass(frozen=True)
class CameraDiff:
    """What a reload changes, over *enabled* cameras only.

    A camera that becomes disabled is in ``removed``; one that becomes enabled is in ``added``.
    """

    # New configs of cameras to start.
    added: tuple[CameraConfig, ...]
    # Ids of running cameras to stop.
    removed: tuple[str, ...]
    # New configs of running cameras whose settings (URL, fps, filters) changed: restart them.
    changed: tuple[CameraConfig, ...]
    # Ids of running cameras to leave alone.
    unchanged: tuple[str, ...]
    # Non-camera sections that differ: validated, but their new values need a restart.
    restart_required: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when no camera has to be started, stopped or restarted."""
        return not (self.added or self.removed or self.changed)


def diff_cameras(old: AppConfig, new: AppConfig) -> CameraDiff:
    """Compare the enabled cameras of ``old`` and ``new`` by id (order is ignored)."""
    before = {c.id: c for c in old.enabled_cameras}
    after = {c.id: c for c in new.enabled_cameras}
    return CameraDiff(
        added=tuple(c for cid, c in after.items() if cid not in before),
        removed=tuple(cid for cid in before if cid not in after),
        changed=tuple(c for cid, c in after.items() if cid in before and before[cid] != c),
        unchanged=tuple(cid for cid, c in after.items() if before.get(cid) == c),
        restart_required=tuple(s for s in _RESTART_SECTIONS if getattr(old, s) != getattr(new, s)),
    )
