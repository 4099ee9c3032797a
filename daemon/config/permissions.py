"""Warn when a config file or a secret file is exposed to other local users.

The rule matches the documented install (docs/deploy.md: ``root:edgewatch``, mode 0640):
the service's group may read the config, nobody else may change it, and a file holding
secrets must not be readable by every local account.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from daemon.config.errors import ConfigWarning

# Anyone who may write the config decides which cameras are opened and where detections go.
WRITABLE_BY_OTHERS: Final = stat.S_IWGRP | stat.S_IWOTH
# A password in a world-readable file is visible to every local account; the group is the
# service's own (the daemon reads its config through it).
SECRETS_READABLE_BY_OTHERS: Final = stat.S_IROTH


def secret_permission_warnings(
    config_file: Path, secret_keys: Sequence[str], secret_files: Sequence[Path] = ()
) -> list[ConfigWarning]:
    """Warnings for a group/world-writable config or secret file, and for a world-readable
    one that holds secrets.

    ``secret_keys`` names the config keys holding inline secrets (an inline MQTT password,
    camera URLs with credentials). ``secret_files`` are files read for secrets
    (``mqtt.password_file``).
    """
    subject = f"config file holds secrets ({', '.join(secret_keys)}) and" if secret_keys else ""
    checks = [(config_file, subject or "config file", bool(secret_keys))]
    checks += [(path, "password file", True) for path in secret_files]
    warnings = []
    for path, what, secret in checks:
        warning = _check(path, what, secret)
        if warning is not None:
            warnings.append(warning)
    return warnings


def _check(path: Path, subject: str, secret: bool) -> ConfigWarning | None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    exposed = []
    if mode & WRITABLE_BY_OTHERS:
        exposed.append("writable by group/others")
    if secret and mode & SECRETS_READABLE_BY_OTHERS:
        exposed.append("readable by others")
    if not exposed:
        return None
    return ConfigWarning(
        file=str(path),
        message=f"{subject} is {' and '.join(exposed)} (mode {mode:04o})",
        hint=f"run: chmod 640 {path} (its group the daemon's, as docs/deploy.md installs it)",
    )
