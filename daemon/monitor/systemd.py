"""sd_notify without libsystemd: READY / STATUS / WATCHDOG / STOPPING datagrams.

A no-op outside systemd (no ``$NOTIFY_SOCKET``). The environment is passed in (default
``os.environ``) so tests need not mutate the process environment.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """sd_notify to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._env = env
        target = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if target.startswith("@"):
            # Linux abstract namespace: a leading NUL instead of systemd's '@' notation.
            self._address = b"\0" + target[1:].encode()
        elif target.startswith("/"):
            self._address = target
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, message: str) -> bool:
        """Send one sd_notify datagram; False (logged once) if it could not be delivered."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self._address)
            return True
        except OSError as exc:
            if not self._failed:
                log.warning("sd_notify failed", extra={"error": str(exc)})
                self._failed = True
            return False

    def ready(self) -> bool:
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        # STATUS is one line; a newline would start a new (bogus) assignment.
        return self.notify("STATUS=" + text.replace("\n", " "))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds within which systemd expects WATCHDOG=1 (ping at half), or None if off.

        Like sd_watchdog_enabled(): ``$WATCHDOG_PID``, when set, must be this process.
        """
        usec = self._env.get("WATCHDOG_USEC", "")
        pid = self._env.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        if pid and (not pid.isdigit() or int(pid) != os.getpid()):
            return None
        return int(usec) / 1_000_000

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
