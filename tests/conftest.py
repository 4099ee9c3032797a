"""Shared fixtures: real mosquitto, real RTSP server, the daemon as a process, shared data."""

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.broker",
    "tests.fixtures.rtsp",
    "tests.fixtures.daemon",
]
