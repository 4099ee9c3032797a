"""Secrets that cannot leak by accident.

``Secret`` hides its value from ``repr``/``str``/f-strings, so a config object can be logged
whole. ``mask_url`` removes credentials from camera URLs wherever they are shown
(logs, MQTT payloads, metric labels).
"""

from __future__ import annotations

import re
from typing import Final

_MASK: Final = "***"
# scheme://user:password@host or scheme://user@host. Greedy up to the last '@' before the
# path, because operators paste passwords with an unencoded '@'.
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s]*)@")


class Secret:
    """A string whose value is only available through ``reveal()``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def mask_url(url: str) -> str:
    """Return ``url`` with any ``user:password@`` replaced by ``***@``."""
    return _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{_MASK}@", url)


def mask_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Mask URL credentials in free text (e.g. an OpenCV error) and any literal secret values."""
    masked = mask_url(text)
    for value in secrets:
        if value:
            masked = masked.replace(value, _MASK)
    return masked
