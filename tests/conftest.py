"""Shared fixtures: real mosquitto, real RTSP server, the daemon as a process, shared data."""

import logging
import os
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.broker",
    "tests.fixtures.rtsp",
    "tests.fixtures.daemon",
    "tests.fixtures.disk",
]


@pytest.fixture(autouse=True)
def _root_logging_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test that runs a command in-process (``daemon.cli.main``) points the root logger at
    that test's captured stderr, which pytest closes afterwards, and leaves its log format in
    the environment that later daemons inherit; later log records from any test would then
    fail to write. Each test leaves the root logger and those variables as it found them."""
    for name in ("EDGEWATCH_LOG_LEVEL", "EDGEWATCH_LOG_FORMAT"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            # setenv first records "unset" as the value to restore; delenv of an absent
            # variable records nothing.
            monkeypatch.setenv(name, "")
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
