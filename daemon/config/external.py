"""Checks on values that point outside the config file: camera URLs, files, secrets.

Each function returns the checked value or raises ``BadValue`` with a message that never
contains a camera URL or a secret.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from daemon.config.errors import BadValue
from daemon.config.secrets import unsafe_userinfo

STREAM_SCHEMES: Final = frozenset({"rtsp", "rtsps", "http", "https"})
_URL_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_V4L2_DEVICE: Final = re.compile(r"/dev/video\d+|/dev/v4l/.+")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# ``${NAME}`` or ``${NAME:-default}`` in a path: lets one file serve several machines
# (configs/demo.yaml finds the shared data through EDGEWATCH_SHARED).
_ENV_REFERENCE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_URL_FORMS: Final = "use rtsp://, rtsps://, http(s)://, a video file path or /dev/videoN"


def resolve_path(text: str, base_dir: Path, env: Mapping[str, str]) -> Path:
    """``text`` as a normalised absolute path, ``${NAME:-default}`` references filled from
    ``env``; relative paths start at ``base_dir``."""
    expanded = _ENV_REFERENCE.sub(lambda m: _env_value(m, env), text)
    return Path(os.path.normpath(base_dir / Path(expanded).expanduser()))


def _env_value(reference: re.Match[str], env: Mapping[str, str]) -> str:
    name, default = reference.group(1), reference.group(2)
    value = env.get(name)
    if value:
        return value
    if default is not None:
        return default
    raise BadValue(f"environment variable {name} is not set (write ${{{name}:-DEFAULT}} for one)")


def require_file(path: Path) -> Path:
    """``path`` if it is a readable regular file."""
    if not path.exists():
        raise BadValue(f"file not found: {path}")
    if not path.is_file():
        raise BadValue(f"not a regular file: {path}")
    if not os.access(path, os.R_OK):
        raise BadValue(f"file not readable by this user: {path}")
    return path


def is_stream_url(url: str) -> bool:
    """True for ``scheme://...`` forms (as opposed to file paths and devices)."""
    scheme = _URL_SCHEME.match(url)
    return scheme is not None and url[scheme.end() : scheme.end() + 2] == "//"


def check_camera_url(url: str, base_dir: Path, env: Mapping[str, str]) -> str:
    """The camera URL as the reader will open it: stream URLs and devices unchanged, video
    files as absolute paths (which must exist). Devices are not checked: a USB camera may be
    plugged in later and the reader retries."""
    if url != url.strip():
        raise BadValue("has leading or trailing spaces")
    if is_stream_url(url):
        _check_stream_url(url)
        return url
    scheme = _URL_SCHEME.match(url)
    if scheme and len(scheme.group(1)) > 1:
        raise BadValue(f"malformed URL, expected scheme://host; {_URL_FORMS}")
    if url.startswith("/dev/"):
        if not _V4L2_DEVICE.fullmatch(url):
            raise BadValue(f"unsupported device {url} (expected /dev/videoN)")
        return url
    return str(require_file(resolve_path(url, base_dir, env)))


def _check_stream_url(url: str) -> None:
    scheme = url.split(":", 1)[0].lower()
    if scheme not in STREAM_SCHEMES:
        raise BadValue(f"unsupported URL scheme '{scheme}'; {_URL_FORMS}")
    unsafe = unsafe_userinfo(url)
    if unsafe is not None:
        shown = ", ".join(repr(c) for c in unsafe)
        raise BadValue(
            f"the user name or password has characters that cannot be read unambiguously "
            f"({shown}); percent-encode them (space -> %20, / -> %2F, ? -> %3F, # -> %23)"
        )
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in 0..65535
    except ValueError:
        raise BadValue(
            "malformed URL (bad host or port; percent-encode special characters in a password)"
        ) from None
    if not parts.hostname:
        raise BadValue("URL has no host")


def read_password_file(path: Path) -> str:
    """The file's content without surrounding whitespace (a trailing newline is usual)."""
    try:
        value = require_file(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise BadValue(f"cannot read password file: {path}") from None
    if not value:
        raise BadValue(f"password file is empty: {path}")
    return value


def read_password_env(name: str, env: Mapping[str, str]) -> str:
    """The value of environment variable ``name``, which must be set and non-empty."""
    if not _ENV_NAME.fullmatch(name):
        raise BadValue(f"not a valid environment variable name: {name!r}")
    value = env.get(name)
    if value is None:
        raise BadValue(f"environment variable {name} is not set")
    if not value:
        raise BadValue(f"environment variable {name} is empty")
    return value


def tls_problems(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> list[tuple[str, str]]:
    """(key, message) for TLS files the broker connection could not load: what a
    ``check-config`` can find without connecting."""
    problems = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (ssl.SSLError, OSError, ValueError) as exc:
            problems.append(("ca_file", f"not a CA certificate file (PEM): {_ssl_reason(exc)}"))
    if cert_file is not None and key_file is not None:
        try:
            context.load_cert_chain(str(cert_file), str(key_file), password=_no_passphrase)
        except (ssl.SSLError, OSError, ValueError) as exc:
            message = (
                "cannot load the client certificate and key (PEM, key not encrypted, "
                f"matching each other): {_ssl_reason(exc)}"
            )
            problems.append(("cert_file", message))
    return problems


def _no_passphrase() -> bytes:
    # The daemon runs unattended: an encrypted key could only prompt on a terminal.
    raise ValueError("the key file is encrypted")


def _ssl_reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return getattr(exc, "strerror", None) or str(exc)
