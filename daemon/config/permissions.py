"""Warn when files holding secrets can be read by other local users."""

from __future__ import annotations

import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from daemon.config.errors import ConfigWarning

# Group or others may read: a camera password in such a file is visible to every local account.
_READABLE_BY_OTHERS: Final = stat.S_IRGRP | stat.S_IROTH


def secret_permission_warnings(
    config_file: Path, secret_keys: Sequence[str], secret_files: Sequence[Path] = ()
) -> list[ConfigWarning]:
    """Warnings for secret-holding files that are group- or world-readable.

    ``secret_keys`` names the config keys holding inline secrets (an inline MQTT password,
    camera URLs with credentials); the config file is only checked when there are any.
    ``secret_files`` are files read for secrets (``mqtt.password_file``), always checked.
    """
    warnings = []
    if secret_keys:
        subject = f"config file holds secrets ({', '.join(secret_keys)}) and is"
        warning = _check(config_file, subject)
        if warning is not None:
            warnings.append(warning)
    for path in secret_files:
        warning = _check(path, "password file is")
        if warning is not None:
            warnings.append(warning)
    return warnings


def _check(path: Path, subject: str) -> ConfigWarning | None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    if not mode & _READABLE_BY_OTHERS:
        return None
    return ConfigWarning(
        file=str(path),
        message=f"{subject} readable by group/others (mode {mode:04o})",
        hint=f"run: chmod 600 {path} (owned by the user the daemon runs as)",
    )
