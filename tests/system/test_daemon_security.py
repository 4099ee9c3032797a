"""Security through the whole daemon.

The daemon talks MQTT over TLS with a username and a password (read from a file, or from an
environment variable) to a mosquitto that requires both, and reads an RTSP server that
requires basic authentication. Run with ``--log-level debug``, neither password appears in
its log, in any MQTT payload (the state reasons of a camera whose URL fails included), nor
in ``/metrics`` or ``/healthz``. A config file holding secrets that others can read is
warned about. The systemd unit scores "OK" or better in ``systemd-analyze security`` and runs
as a dedicated unprivileged user.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.broker import Subscriber
from tests.fixtures.data import REPO
from tests.fixtures.observe import payloads
from tests.fixtures.rtsp import RTSP_SECRET, leak_forms
from tests.harness.broker import Mosquitto, free_port
from tests.harness.daemon import DaemonProcess, daemon_config
from tests.harness.rtsp import RtspServer

PREFIX = "secure"
MQTT_USER = "edgewatch"
MQTT_SECRET = "Mqtt-S3cret/pw@9"
PASSWORD_ENV = "EDGEWATCH_TEST_MQTT_PASSWORD"
UNIT = REPO / "systemd" / "edgewatch.service"
# systemd-analyze's scale: 0-2 "OK" and below is better; above 4.9 is "MEDIUM" or worse.
MAX_EXPOSURE = 4.9


@pytest.mark.rtsp
@pytest.mark.mqtt
@pytest.mark.parametrize("password_source", ["password_file", "password_env"])
def test_credentials_never_leak(
    password_source: str,
    tmp_path: Path,
    *,
    secure_rtsp: RtspServer,
    run_daemon: Callable[..., DaemonProcess],
    model_onnx: Path,
) -> None:
    broker = Mosquitto(
        username=MQTT_USER, password=MQTT_SECRET, tls=True, workdir=tmp_path / "mosquitto"
    )
    broker.start()
    assert broker.ca_file is not None
    checker = Subscriber(
        broker, (f"{PREFIX}/#",), username=MQTT_USER, password=MQTT_SECRET, ca_file=broker.ca_file
    )
    env: dict[str, str] = {}
    if password_source == "password_file":
        secret_file = tmp_path / "mqtt-password"
        secret_file.write_text(MQTT_SECRET + "\n")
        secret_file.chmod(0o600)
        password = {"password_file": str(secret_file)}
    else:
        env[PASSWORD_ENV] = MQTT_SECRET
        password = {"password_env": PASSWORD_ENV}
    good = secure_rtsp.url("cam")
    port = secure_rtsp.port
    cameras = {
        "cam": good,
        # Right credentials, wrong path: fails with the URL in OpenCV's error.
        "wrongpath": good.replace(f":{port}/cam", f":{port}/nothing-here"),
    }
    metrics_port = free_port()
    try:
        daemon = run_daemon(
            daemon_config(
                cameras,
                model_onnx,
                mqtt_port=broker.port,
                metrics_port=metrics_port,
                prefix=PREFIX,
                mqtt={
                    "username": MQTT_USER,
                    **password,
                    "tls": {"ca_file": str(broker.ca_file)},
                },
            ),
            log_level="debug",
            env=env,
            mode=0o644,  # world-readable, with camera credentials inside: must warn
        )
        daemon.wait_streaming(["cam"])
        daemon.wait_until(
            lambda: daemon.healthz()["cameras"]["wrongpath"] in ("reconnecting", "down"),
            30,
            "wrong path reported",
        )
        checker.wait_for(lambda _: len(payloads(checker, "detections", "cam")) >= 3, 30)
        checker.wait_for(lambda _: bool(payloads(checker, "state", "wrongpath")), 10)
        time.sleep(1.5)  # a stats interval with both cameras
        assert daemon.metric("edgewatch_mqtt_connected") == 1
        bodies = {"/metrics": daemon.metrics(), "/healthz": daemon.http_get("/healthz")[1]}
        assert daemon.stop() == 0
        status = f"{PREFIX}/testnode/status"
        checker.wait_for(
            lambda _: [m.payload for m in checker.messages(status)][-1:] == [b"offline"], 10
        )
    finally:
        checker.close()
        broker.close()

    log = daemon.log_text()
    messages = checker.messages()
    assert messages
    places = {"daemon log": log, **bodies}
    places.update({f"MQTT {m.topic}": m.payload.decode(errors="replace") for m in messages})
    for secret in (MQTT_SECRET, RTSP_SECRET):
        for form in leak_forms(secret):
            leaks = [where for where, text in places.items() if form in text]
            assert not leaks, f"secret {form!r} found in {leaks}"
    # The reasons that name the camera's URL (the last one is the clean stop's "node stopped").
    reasons = [s["reason"] for s in payloads(checker, "state", "wrongpath") if s["reason"]]
    url_reasons = [r for r in reasons if "rtsp://" in r]
    assert url_reasons
    assert all("***@" in r for r in url_reasons), reasons
    assert re.search(r'"msg": "config file holds secrets \(cameras\[0\]\.url.*mode 0644', log)
    records = [r for r in daemon.log_records() if r.get("msg") == "mqtt publisher started"]
    assert records
    assert records[0]["tls"] is True
    assert records[0]["auth"] is True
    assert any(r.get("level") == "debug" for r in daemon.log_records())


def test_systemd_unit_is_hardened() -> None:
    text = UNIT.read_text()
    users = re.findall(r"^User=(\S+)$", text, re.MULTILINE)
    assert users == ["edgewatch"]  # dedicated; not root, not the shared `nobody`
    assert re.search(r"^NoNewPrivileges=yes$", text, re.MULTILINE)
    assert re.search(r"^CapabilityBoundingSet=$", text, re.MULTILINE)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed; the unit's static checks passed")
    result = subprocess.run(
        [analyze, "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr[-2000:]
    exposure, verdict = float(match.group(1)), match.group(2)
    print(f"systemd-analyze security: exposure {exposure} {verdict}")
    assert exposure <= MAX_EXPOSURE
    assert verdict in ("OK", "SAFE", "PERFECT")


QUERY_SECRET = "Qry-S3cret-pw"


@pytest.mark.mqtt
def test_query_credentials_masked_and_password_variable_withheld_from_readers(
    tmp_path: Path, *, run_daemon: Callable[..., DaemonProcess], model_onnx: Path
) -> None:
    """An HTTP camera with ``?user=...&pwd=...`` (a common CGI form) that cannot be opened:
    neither the log nor the retained state reason shows the password, and the reader
    process does not inherit the environment variable holding the MQTT password."""
    broker = Mosquitto(username=MQTT_USER, password=MQTT_SECRET, workdir=tmp_path / "mosquitto")
    broker.start()
    checker = Subscriber(broker, (f"{PREFIX}/#",), username=MQTT_USER, password=MQTT_SECRET)
    url = f"http://127.0.0.1:{free_port()}/videostream.cgi?user=admin&pwd={QUERY_SECRET}"
    try:
        daemon = run_daemon(
            daemon_config(
                {"cgi": url},
                model_onnx,
                mqtt_port=broker.port,
                metrics_port=free_port(),
                prefix=PREFIX,
                mqtt={"username": MQTT_USER, "password_env": PASSWORD_ENV},
            ),
            log_level="debug",
            env={PASSWORD_ENV: MQTT_SECRET},
        )
        daemon.wait_until(
            lambda: daemon.healthz()["cameras"]["cgi"] in ("reconnecting", "down"),
            30,
            "unreachable camera reported",
        )
        checker.wait_for(lambda _: bool(payloads(checker, "state", "cgi")), 10)
        reader = daemon.healthz()["readers"]["cgi"]
        environment = Path(f"/proc/{reader}/environ").read_bytes().split(b"\0")
        assert daemon.stop() == 0
    finally:
        checker.close()
        broker.close()

    names = {entry.split(b"=", 1)[0].decode() for entry in environment if entry}
    assert PASSWORD_ENV not in names
    assert "PATH" in names  # the rest of the environment is still there
    reasons = [s["reason"] for s in payloads(checker, "state", "cgi") if s["reason"]]
    assert not any(QUERY_SECRET in r for r in reasons), reasons
    url_reasons = [r for r in reasons if "http://" in r]
    assert url_reasons
    assert all("pwd=***" in r for r in url_reasons), reasons
    log = daemon.log_text()
    assert "pwd=***" in log
    assert QUERY_SECRET not in log
    assert MQTT_SECRET not in log
