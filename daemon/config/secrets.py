"""Secrets that cannot leak by accident.

``Secret`` hides its value from ``repr``/``str``/f-strings, so a config object can be logged
whole. ``mask_url`` is the one place that knows where a URL carries credentials (the user
info before the last ``@`` of the authority, and query parameters named like a user, a
password, a token or a key); every display of a camera URL or of free text that may contain
one (logs, MQTT payloads, metric labels, reader errors) goes through it.

Both patterns are anchored on literal characters and their repeated parts cannot overlap, so
masking stays linear in the text length: it runs on every field of every log line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final
from urllib.parse import unquote

MASK: Final = "***"
# After ``scheme://``: the authority, up to the query, fragment, whitespace or a quote. The
# user info ends at its LAST '@' (operators paste passwords with an unencoded '@', which
# FFmpeg accepts too), so a path containing '@' is masked as well: masking too much is safe.
_AUTHORITY: Final = re.compile(r"://([^\s\"'<>?#]*)")
_AUTHORITY_REST: Final = re.compile(r"[^\s\"'<>?#]*")
# Where the authority stops at a space: an '@' within a password's length means a password
# pasted with unencoded spaces ("rtsp://user:my pass@host"). Bounded, to stay linear.
_SPACED_USERINFO: Final = re.compile(r"[^\n\"'<>?#/@]{1,64}@")
# ``?name=value`` / ``&name=value`` / ``;name=value``; neither part crosses a separator, so
# the spans of two matches never overlap.
_QUERY_PARAM: Final = re.compile(r"([?&;])([^=&;?#\s\"'<>]*)=([^&;#\s\"'<>]*)")
# Query parameter names containing any of these hold credentials
# (``user=``, ``pwd=``, ``passwd=``, ``access_token=``, ``authkey=``, ``api_key=``...).
_CREDENTIAL_WORDS: Final = ("user", "usr", "login", "pass", "pwd", "token", "auth", "key", "secret")
# Characters a user info may hold unencoded: RFC 3986's, plus '@' (see _AUTHORITY), less
# the quote, which RFC 3986 allows but which ends the authority the masker reads (free text
# quotes URLs with it). Anything else must be percent-encoded, so that check-config's
# reading of a URL's user info and the masker's agree.
_USERINFO_SAFE: Final = re.compile(r"[A-Za-z0-9\-._~!$&()*+,;=:%@]*")
# Literal secrets shorter than this are not masked in free text: replacing every "ab" in a
# message would destroy it while hiding next to nothing.
_MIN_LITERAL: Final = 3


class Secret:
    """A string whose value is only available through ``reveal()``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def is_credential_name(name: str) -> bool:
    """Whether a query parameter called ``name`` carries a credential."""
    lowered = name.lower()
    return any(word in lowered for word in _CREDENTIAL_WORDS)


def mask_url(text: str) -> str:
    """``text`` with every URL credential replaced by ``***``: ``rtsp://***@host/path``,
    ``http://host/cgi?user=***&pwd=***``. Works on a bare URL and on free text alike."""
    if "://" in text:
        text = _mask_userinfo(text)
    if "=" in text:
        text = _QUERY_PARAM.sub(_mask_param, text)
    return text


def mask_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``mask_url`` plus every literal value of ``secrets`` (from ``url_secrets``), for free
    text such as an FFmpeg error that quotes a password without its URL."""
    masked = mask_url(text)
    for value in secrets:
        masked = masked.replace(value, MASK)
    return masked


def url_secrets(url: str) -> tuple[str, ...]:
    """The credential values a URL carries, as written and percent-decoded, longest first."""
    values: set[str] = set()
    userinfo = _userinfo(url)
    if userinfo:
        values.update(userinfo.split(":", 1))
    values.update(m.group(3) for m in _QUERY_PARAM.finditer(url) if is_credential_name(m.group(2)))
    values |= {unquote(v) for v in values}
    return tuple(sorted((v for v in values if len(v) >= _MIN_LITERAL), key=len, reverse=True))


def has_credentials(url: str) -> bool:
    """True when a URL carries user info or a credential query parameter."""
    return _userinfo(url) is not None or any(
        is_credential_name(m.group(2)) for m in _QUERY_PARAM.finditer(url)
    )


def split_userinfo(url: str) -> tuple[str, str, str]:
    """``url`` without its user info, and the user and password it held, percent-decoded
    (empty when it has none); the user info ends where the masker's reading ends it."""
    span = next(_userinfo_spans(url), None)
    if span is None:
        return url, "", ""
    start, at = span
    user, _, password = url[start:at].partition(":")
    return url[:start] + url[at + 1 :], unquote(user), unquote(password)


def unsafe_userinfo(url: str) -> str | None:
    """The characters of a URL's user info that must be percent-encoded to be read
    unambiguously (a space, '/', '?', '#', a quote...), or None when it has none or needs none.

    Reads ``url`` as a whole, up to its query or fragment, not as free text like the masker,
    so it finds every character that would end the masker's reading early."""
    authority = url.split("://", 1)[1] if "://" in url else ""
    end = min((i for i in (authority.find("?"), authority.find("#")) if i >= 0), default=None)
    authority = authority[:end]
    at = authority.rfind("@")
    if at < 0:
        return None
    userinfo = authority[:at]
    if _USERINFO_SAFE.fullmatch(userinfo):
        return None
    return "".join(sorted({c for c in userinfo if not _USERINFO_SAFE.fullmatch(c)}))


def _userinfo(url: str) -> str | None:
    span = next(_userinfo_spans(url), None)
    return url[span[0] : span[1]] if span is not None else None


def _userinfo_spans(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of the user info of every URL in ``text``: the masker's one reading."""
    done = 0
    for match in _AUTHORITY.finditer(text):
        start = match.start(1)
        if start < done:
            continue  # inside the user info of the previous URL
        at = text.rfind("@", start, _authority_end(text, match.end(1)))
        if at >= 0:
            yield start, at
            done = at


def _authority_end(text: str, end: int) -> int:
    """``end`` moved past a user info with unencoded spaces and the host after it."""
    spaced = _SPACED_USERINFO.match(text, end) if text.startswith(" ", end) else None
    if spaced is None:
        return end
    rest = _AUTHORITY_REST.match(text, spaced.end())
    return rest.end() if rest is not None else spaced.end()


def _mask_userinfo(text: str) -> str:
    pieces: list[str] = []
    done = 0
    for start, at in _userinfo_spans(text):
        pieces += (text[done:start], MASK)
        done = at
    pieces.append(text[done:])
    return "".join(pieces)


def _mask_param(match: re.Match[str]) -> str:
    separator, name, value = match.groups()
    if not value or value == MASK or not is_credential_name(name):
        return match.group(0)
    return f"{separator}{name}={MASK}"
