"""Credential masking: every form a camera URL can carry them in, through one function.

``mask_url`` is what logs, MQTT payloads, metric labels and reader errors go through;
``url_secrets`` is what a reader masks in free text that quotes a credential bare.
"""

from __future__ import annotations

import logging
import string
from pathlib import Path

import pytest

from daemon.config.errors import BadValue
from daemon.config.external import check_camera_url
from daemon.config.secrets import has_credentials, mask_text, mask_url, url_secrets
from daemon.logs import JsonFormatter, LogfmtFormatter

PW = "S3cret-pw"

FORMS = [
    # (url, masked form, secrets it carries)
    (f"rtsp://admin:{PW}@10.0.0.5:554/live", "rtsp://***@10.0.0.5:554/live", {"admin", PW}),
    (f"rtsp://admin:{PW}@x@10.0.0.5/live", "rtsp://***@10.0.0.5/live", {"admin", f"{PW}@x"}),
    (
        "rtsp://admin:S3c%2Fret%40pw@h/live",
        "rtsp://***@h/live",
        {"admin", "S3c%2Fret%40pw", "S3c/ret@pw"},
    ),
    # Pasted without percent-encoding: a space, a '/' (check-config refuses both).
    (f"rtsp://admin:{PW} x@10.0.0.5/live", "rtsp://***@10.0.0.5/live", {"admin", f"{PW} x"}),
    (f"rtsp://admin:{PW}/x@10.0.0.5/live", "rtsp://***@10.0.0.5/live", {"admin", f"{PW}/x"}),
    (
        f"http://10.0.0.7/videostream.cgi?user=admin&pwd={PW}",
        "http://10.0.0.7/videostream.cgi?user=***&pwd=***",
        {"admin", PW},
    ),
    (
        f"https://cam/snap?channel=1&password={PW}&access_token=tok-123;authkey=k-456",
        "https://cam/snap?channel=1&password=***&access_token=***;authkey=***",
        {PW, "tok-123", "k-456"},
    ),
    (
        f"http://cam/s.cgi?api_key={PW}&secret=abcd",
        "http://cam/s.cgi?api_key=***&secret=***",
        {PW, "abcd"},
    ),
]


@pytest.mark.parametrize(("url", "masked", "secrets"), FORMS)
def test_every_credential_form_is_masked(url: str, masked: str, secrets: set[str]) -> None:
    assert mask_url(url) == masked
    assert has_credentials(url)
    assert set(url_secrets(url)) == secrets
    # In free text, e.g. an FFmpeg error quoting the URL, and twice on one line.
    line = f"cannot open {url} (401 Unauthorized), retry {url}"
    assert mask_url(line) == f"cannot open {masked} (401 Unauthorized), retry {masked}"


@pytest.mark.parametrize("char", sorted(set(string.printable) - set(string.ascii_letters)))
def test_a_password_the_config_accepts_is_masked(char: str) -> None:
    """The config check and the masker read a URL's user info alike: whatever character a
    password holds, the config refuses the URL or every display of it hides the password."""
    password = f"pa{char}ss-word"
    url = f"rtsp://admin:{password}@10.0.0.5/live"
    try:
        check_camera_url(url, Path("/"), {})
    except BadValue:
        return
    assert password not in mask_url(f"cannot open {url}")
    assert password in url_secrets(url)


@pytest.mark.parametrize(
    "text",
    [
        "rtsp://10.0.0.5:554/Streaming/Channels/101",
        "http://cam/videostream.cgi?channel=1&resolution=640",
        "/work/shared/videos/a.mp4",
        "c" * 70_000,
        "opened rtsp://cam.local/live in 0.2 s",
    ],
)
def test_text_without_credentials_is_unchanged(text: str) -> None:
    assert mask_url(text) == text
    assert url_secrets(text) == ()


def test_bare_secret_in_free_text() -> None:
    url = f"rtsp://admin:{PW}@10.0.0.5/live"
    assert mask_text(f"auth failed for password {PW}", url_secrets(url)) == (
        "auth failed for password ***"
    )


@pytest.mark.parametrize("formatter", [LogfmtFormatter(), JsonFormatter()])
def test_log_lines_are_masked(formatter: logging.Formatter) -> None:
    url = f"http://10.0.0.7/videostream.cgi?user=admin&pwd={PW}"
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, f"cannot open {url}", (), None)
    record.reason = f"no frame: cannot open rtsp://u:{PW} x@h/live"
    record.camera = "c" * 70_000
    line = formatter.format(record)
    assert PW not in line
    assert "pwd=***" in line
    assert "rtsp://***@h/live" in line
    assert "c" * 70_000 in line
