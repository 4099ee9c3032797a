"""The /metrics and /healthz endpoint under hostile clients: many idle connections, and
clients that hang up mid-request (real sockets against the real server)."""

from __future__ import annotations

import http.client
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from daemon.monitor.metrics import MAX_CONNECTIONS, DaemonMetrics, Health, MetricsServer

IDLE_CLIENTS = 40  # fewer than the accept queue holds: accepted in order


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer("127.0.0.1", 0, DaemonMetrics().registry, lambda: Health(True))
    srv.start()
    yield srv
    srv.stop()


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_idle_connections_are_capped(server: MetricsServer) -> None:
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(IDLE_CLIENTS)]
    try:
        # Connections are accepted in order: once this one is answered, every idle one was
        # accepted (and, without a cap, given its own thread).
        status, body = _get(server.port, "/healthz")
        threads = threading.active_count() - before
        assert threads <= MAX_CONNECTIONS, f"{threads} threads for {IDLE_CLIENTS} idle clients"
        assert (status, body) == (503, b"busy\n")
    finally:
        for sock in idle:
            sock.close()
    assert _get(server.port, "/healthz")[0] == 200


def test_clients_hanging_up_are_logged_not_dumped(
    server: MetricsServer, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="daemon.monitor.metrics")
    before = threading.active_count()
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        # SO_LINGER 0: close with a reset, as a client that gave up does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    # Accepted in order: once this one is answered (served, or busy while the hung-up
    # ones still hold every slot), all of those were accepted.
    _get(server.port, "/healthz")
    _wait_threads(before)  # every request thread has finished writing
    assert "Traceback" not in capfd.readouterr().err
    assert _get(server.port, "/healthz")[0] == 200


def _wait_threads(count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while threading.active_count() > count:
        if time.monotonic() > deadline:
            raise TimeoutError("request threads still running")
        time.sleep(0.05)
