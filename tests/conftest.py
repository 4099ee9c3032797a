"""Shared fixtures: real mosquitto, real RTSP server, the shared data folder."""

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.broker",
    "tests.fixtures.rtsp",
]
