"""Start Debian's real ``mosquitto`` on 127.0.0.1 for tests, the demo and benchmarks.

``Mosquitto`` picks a free port once and keeps it, so ``stop()`` / ``start()`` simulate a
broker outage on the same address. Optional username/password (a real ``password_file``
made with ``mosquitto_passwd``), TLS with a throw-away self-signed certificate made with
``openssl``, and persistence (so subscribers' persistent sessions survive a restart).
No pytest here: the demo imports it too.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.process import kill, start_logged, tail, terminate
from tests.harness.service import Service

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _binary(name: str) -> str:
    # Debian installs the broker in /usr/sbin, which is not on an ordinary user's PATH.
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise FileNotFoundError(f"{name} not found: install Debian's 'mosquitto' package")
    return found


class Mosquitto(Service):
    """A mosquitto process on ``127.0.0.1:<port>``; use as a context manager."""

    def __init__(
        self,
        port: int | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        persistence: bool = False,
        workdir: Path | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.host = HOST
        self.port = port if port is not None else free_port()
        self._own_dir = workdir is None
        self.workdir = (
            workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="mosquitto-"))
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "mosquitto.log"
        self.ca_file: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} {HOST}",
            f"allow_anonymous {'false' if username else 'true'}",
            f"persistence {'true' if persistence else 'false'}",
            # Unbounded per-client queue: tests count every message of an outage backlog.
            "max_queued_messages 0",
            # Started as root, mosquitto would switch to user 'mosquitto', who cannot read our
            # private working directory; stay the invoking user.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if persistence:
            lines.append(f"persistence_location {self.workdir}/")
        if username is not None and password is not None:
            password_file = self.workdir / "passwd"
            password_file.touch(mode=0o600)
            subprocess.run(
                [_binary("mosquitto_passwd"), "-b", str(password_file), username, password],
                check=True,
                capture_output=True,
                timeout=10,
            )
            lines.append(f"password_file {password_file}")
        if tls:
            cert, key = self._self_signed_cert()
            lines += [f"certfile {cert}", f"keyfile {key}"]
            self.ca_file = cert
        self.config_path = self.workdir / "mosquitto.conf"
        self.config_path.write_text("\n".join(lines) + "\n")

    def _self_signed_cert(self) -> tuple[Path, Path]:
        cert, key = self.workdir / "server.crt", self.workdir / "server.key"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                f"/CN={HOST}",
                "-addext",
                f"subjectAltName=IP:{HOST}",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return cert, key

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (to SIGSTOP it: a hung broker)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start the broker (again, on the same port) and wait until it accepts connections."""
        if self.running:
            return self
        command = [_binary("mosquitto"), "-c", str(self.config_path)]
        self._proc = start_logged(command, self.log_path)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}"
                )
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise TimeoutError(
                        f"mosquitto not accepting on port {self.port} after {timeout} s"
                    ) from None
                time.sleep(0.01)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (mosquitto saves its persistence file), SIGKILL if it lingers."""
        if self._proc is not None:
            terminate(self._proc, timeout)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: an abrupt broker crash. Leaves no process behind."""
        if self._proc is not None:
            kill(self._proc)
        self._proc = None

    def log_tail(self, chars: int = 2000) -> str:
        return tail(self.log_path, chars)

    def close(self) -> None:
        """Stop the broker and delete its working directory (if we made it)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
