"""Config loading and validation, in process, against the real model and videos.

``BAD_CASES`` is the table of malformed configs, each with the one problem line it must give;
tests/system/test_check_config_cli.py runs a subset of it through the real console script.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.config.errors import ConfigError
from daemon.config.load import MAX_CONFIG_BYTES, load_config, load_config_with_warnings
from daemon.config.model import (
    AppConfig,
    BackendKind,
    CameraConfig,
    Decoder,
    ModelConfig,
    MqttConfig,
    Precision,
    TlsConfig,
    VideoCodec,
)
from daemon.config.reload import diff_cameras
from daemon.config.rules import MAX_CAMERAS
from daemon.config.secrets import Secret
from tests.fixtures.data import MODEL_ONNX, REPO, VIDEOS

VIDEO = VIDEOS / "traffic_cctv_road_360p.mp4"
CAMERA_PASSWORD = "Cam3ra-Pw-771"
MQTT_PASSWORD = "S3cr3t-Mqtt-Pass"


@dataclass(frozen=True)
class BadCase:
    """A config (``{model}``/``{video}`` filled in) that must give exactly one problem."""

    name: str
    text: str
    line: int
    key: str
    cause: str


_CAM = "cameras:\n  - id: cam1\n    url: {video}\n"
_MODEL = "model:\n  path: {model}\n"
_BASE = _CAM + _MODEL  # lines 1-5

BAD_CASES = [
    BadCase("yaml_syntax", _CAM + "model:\n  path: '{model}\n", 6, "", "invalid YAML"),
    BadCase("yaml_tab", _BASE + "mqtt:\n\thost: x\n", 7, "", "invalid YAML: found character"),
    BadCase("top_level_list", "- cam1\n- cam2\n", 1, "top level", "expected a mapping"),
    BadCase("empty_file", "# nothing here\n", 0, "", "the file is empty"),
    BadCase("duplicate_yaml_key", _BASE + "  path: x.onnx\n", 6, "model.path", "duplicate key"),
    BadCase(
        "unknown_top_key",
        _BASE + "monitor:\n  stats_interval_s: 2\n",
        6,
        "monitor",
        "unknown key (did you mean 'monitoring'?)",
    ),
    BadCase(
        "unknown_camera_key",
        _CAM + "    max_fsp: 5\n" + _MODEL,
        4,
        "cameras[0].max_fsp",
        "unknown key (did you mean 'max_fps'?)",
    ),
    BadCase(
        "wrong_type_string",
        _CAM + "    max_fps: fast\n" + _MODEL,
        4,
        "cameras[0].max_fps",
        "expected a number in (0, 240] (no camera sends faster), got 'fast'",
    ),
    BadCase(
        "bool_is_not_int",
        _BASE + "  max_batch: true\n",
        6,
        "model.max_batch",
        "got true (a boolean)",
    ),
    BadCase("float_is_not_int", _BASE + "  max_batch: 2.5\n", 6, "model.max_batch", "got 2.5"),
    BadCase(
        "string_is_not_int",
        _BASE + "monitoring:\n  metrics_port: '9108'\n",
        7,
        "monitoring.metrics_port",
        "got '9108'",
    ),
    BadCase("qos_range", _BASE + "mqtt:\n  qos: 3\n", 7, "mqtt.qos", "0, 1 or 2, got 3"),
    BadCase("port_range", _BASE + "mqtt:\n  port: 70000\n", 7, "mqtt.port", "1..65535"),
    BadCase(
        "confidence_range",
        _CAM + "    confidence: 1.5\n" + _MODEL,
        4,
        "cameras[0].confidence",
        "(0, 1], got 1.5",
    ),
    BadCase("iou_zero", _BASE + "  iou: 0\n", 6, "model.iou", "(0, 1], got 0"),
    BadCase(
        "max_batch_zero",
        _BASE + "  max_batch: 0\n",
        6,
        "model.max_batch",
        "1..64 (one",
    ),
    # Values that passed validation but broke the daemon: each has a range with its reason.
    BadCase(
        "max_batch_huge",
        _BASE + "  max_batch: 100000\n",
        6,
        "model.max_batch",
        "expected an integer in 1..64 (one frame per camera; larger batches only add memory "
        "and latency), got 100000",
    ),
    BadCase(
        "input_size_huge",
        _BASE + "  input_size: 32000\n",
        6,
        "model.input_size",
        "expected a multiple of 32 in 32..2048 (YOLOv8 strides; 2048 is ten times the work of "
        "640), got 32000",
    ),
    BadCase(
        "intra_op_threads_huge",
        _BASE + "  intra_op_threads: 1000\n",
        6,
        "model.intra_op_threads",
        "in 0..64 (0 lets the runtime decide; more threads than cores only contend), got 1000",
    ),
    BadCase(
        "stats_interval_tiny",
        _BASE + "monitoring:\n  stats_interval_s: 1.0e-9\n",
        7,
        "monitoring.stats_interval_s",
        "expected a number in [0.5, 86400] (each interval publishes one message per camera), "
        "got 1.0e-9",
    ),
    BadCase(
        "read_timeout_overflows_opencv",
        _BASE + "capture:\n  read_timeout_s: 2200000\n",
        7,
        "capture.read_timeout_s",
        "expected a number in [0.1, 3600] (at most an hour; 0 would mean no timeout), got 2200000",
    ),
    BadCase(
        "open_timeout_zero_ms",
        _BASE + "capture:\n  open_timeout_s: 0.0001\n",
        7,
        "capture.open_timeout_s",
        "[0.1, 3600]",
    ),
    BadCase(
        "camera_id_too_long_for_a_topic",
        "cameras:\n  - id: " + "c" * 70_000 + "\n    url: {video}\n" + _MODEL,
        2,
        "cameras[0].id",
        "expected a camera id of up to 64 letters",
    ),
    BadCase(
        "batch_profile_huge",
        _BASE + "  tensorrt:\n    batch_profile: [1, 8, 100000]\n",
        7,
        "model.tensorrt.batch_profile",
        "max <= 64",
    ),
    BadCase(
        "input_size_multiple",
        _BASE + "  input_size: 630\n",
        6,
        "model.input_size",
        "multiple of 32",
    ),
    BadCase(
        "duplicate_camera_id",
        _BASE.replace(_MODEL, "") + "  - id: cam1\n    url: {video}\n" + _MODEL,
        4,
        "cameras[1].id",
        "duplicate camera id 'cam1' (first at line 2)",
    ),
    BadCase(
        "camera_id_for_mqtt",
        "cameras:\n  - id: front/door\n    url: {video}\n" + _MODEL,
        2,
        "cameras[0].id",
        "got 'front/door'",
    ),
    BadCase(
        "camera_id_number",
        "cameras:\n  - id: 7\n    url: {video}\n" + _MODEL,
        2,
        "cameras[0].id",
        "quote it if you meant the text '7'",
    ),
    BadCase("missing_cameras", _MODEL, 1, "cameras", "required key is missing"),
    BadCase("missing_model_path", _CAM + "model:\n  max_batch: 4\n", 4, "model.path", "required"),
    BadCase("no_cameras", "cameras: []\n" + _MODEL, 1, "cameras", "no cameras configured"),
    BadCase(
        "no_enabled_camera",
        _CAM + "    enabled: false\n" + _MODEL,
        1,
        "cameras",
        "no camera is enabled",
    ),
    BadCase(
        "missing_model_file",
        _CAM + "model:\n  path: models/nope.onnx\n",
        5,
        "model.path",
        "file not found: {dir}/models/nope.onnx",
    ),
    BadCase(
        "missing_video_file",
        "cameras:\n  - id: cam1\n    url: clips/gone.mp4\n" + _MODEL,
        3,
        "cameras[0].url",
        "file not found: {dir}/clips/gone.mp4",
    ),
    BadCase(
        "missing_password_file",
        _BASE + "mqtt:\n  username: edge\n  password_file: mqtt.pw\n",
        8,
        "mqtt.password_file",
        "file not found: {dir}/mqtt.pw",
    ),
    BadCase(
        "missing_tls_file",
        _BASE + "mqtt:\n  tls:\n    ca_file: ca.crt\n",
        8,
        "mqtt.tls.ca_file",
        "file not found",
    ),
    BadCase(
        "bad_url_scheme",
        f"cameras:\n  - id: cam1\n    url: udp://admin:{CAMERA_PASSWORD}@10.0.0.5:5000\n" + _MODEL,
        3,
        "cameras[0].url",
        "unsupported URL scheme 'udp'",
    ),
    # Credentials that no parser reads the same way: refused, so they never reach a log.
    BadCase(
        "password_with_space",
        f"cameras:\n  - id: cam1\n    url: rtsp://admin:{CAMERA_PASSWORD} x@10.0.0.5/live\n"
        + _MODEL,
        3,
        "cameras[0].url",
        "the user name or password has characters that cannot be read unambiguously (' '); "
        "percent-encode them (space -> %20, / -> %2F",
    ),
    BadCase(
        "password_with_slash",
        f"cameras:\n  - id: cam1\n    url: rtsp://admin:{CAMERA_PASSWORD}/x@10.0.0.5/live\n"
        + _MODEL,
        3,
        "cameras[0].url",
        "cannot be read unambiguously ('/')",
    ),
    BadCase(
        "bad_url_port",
        f"cameras:\n  - id: cam1\n    url: rtsp://admin:{CAMERA_PASSWORD}@10.0.0.5:99999/x\n"
        + _MODEL,
        3,
        "cameras[0].url",
        "malformed URL",
    ),
    BadCase(
        "two_password_sources",
        _BASE + f"mqtt:\n  username: edge\n  password: {MQTT_PASSWORD}\n  password_env: PW\n",
        9,
        "mqtt.password_env",
        "give only one of password, password_file, password_env",
    ),
    BadCase(
        "password_env_unset",
        _BASE + "mqtt:\n  username: edge\n  password_env: EDGEWATCH_TEST_UNSET_PW\n",
        8,
        "mqtt.password_env",
        "environment variable EDGEWATCH_TEST_UNSET_PW is not set",
    ),
    BadCase(
        "password_wrong_type",
        _BASE + "mqtt:\n  username: edge\n  password: 31415926\n",
        8,
        "mqtt.password",
        "got an integer",
    ),
    BadCase(
        "password_without_username",
        _BASE + f"mqtt:\n  password: {MQTT_PASSWORD}\n",
        6,
        "mqtt.username",
        "required when a password is set",
    ),
    BadCase(
        "unknown_backend",
        _BASE + "  backend: tensorrtt\n",
        6,
        "model.backend",
        "one of onnxruntime, tensorrt, torch, got 'tensorrtt' (did you mean 'tensorrt'?)",
    ),
    BadCase(
        "unknown_precision",
        _BASE + "  tensorrt:\n    precision: int4\n",
        7,
        "model.tensorrt.precision",
        "got 'int4' (did you mean 'int8'?)",
    ),
    BadCase(
        "empty_class_filter",
        _CAM + "    classes: []\n" + _MODEL,
        4,
        "cameras[0].classes",
        "non-empty list",
    ),
    BadCase(
        "section_not_mapping",
        _BASE + "mqtt: broker.local\n",
        6,
        "mqtt",
        "expected a mapping, got 'broker.local'",
    ),
    BadCase(
        "reconnect_order",
        _BASE + "capture:\n  reconnect_initial_s: 5\n  reconnect_max_s: 1\n",
        8,
        "capture.reconnect_max_s",
        "must be >= reconnect_initial_s (5)",
    ),
    BadCase(
        "unknown_decoder",
        _CAM + "    decoder: nvdecc\n" + _MODEL,
        4,
        "cameras[0].decoder",
        "expected one of ffmpeg, jetson, nvdec, got 'nvdecc' (did you mean 'nvdec'?)",
    ),
    BadCase(
        "unknown_codec",
        _CAM + "    decoder: jetson\n    codec: h.265\n" + _MODEL,
        5,
        "cameras[0].codec",
        "expected one of h264, h265, got 'h.265' (did you mean 'h265'?)",
    ),
    BadCase(
        "codec_without_jetson",
        _CAM + "    codec: h265\n" + _MODEL,
        4,
        "cameras[0].codec",
        "only read with decoder: jetson (FFmpeg finds the codec itself)",
    ),
    BadCase(
        "jetson_device",
        "cameras:\n  - id: cam1\n    url: /dev/video0\n    decoder: jetson\n" + _MODEL,
        4,
        "cameras[0].decoder",
        "jetson reads rtsp://, rtsps:// streams and .mp4, .m4v, .mov files; use ffmpeg",
    ),
    BadCase(
        "nvdec_device",
        "cameras:\n  - id: cam1\n    url: /dev/video0\n    decoder: nvdec\n" + _MODEL,
        4,
        "cameras[0].decoder",
        "nvdec reads video files and streams, not devices; use ffmpeg",
    ),
    BadCase(
        "nvdec_codec",
        _CAM + "    decoder: nvdec\n    codec: h265\n" + _MODEL,
        5,
        "cameras[0].codec",
        "only read with decoder: jetson (FFmpeg finds the codec itself)",
    ),
    BadCase(
        "jetson_http",
        "cameras:\n  - id: cam1\n    url: http://10.0.0.5/mjpg\n    decoder: jetson\n" + _MODEL,
        4,
        "cameras[0].decoder",
        "jetson reads rtsp://",
    ),
]


def write_config(directory: Path, text: str, name: str = "edgewatch.yaml") -> Path:
    path = directory / name
    path.write_text(text.format(model=MODEL_ONNX, video=VIDEO), encoding="utf-8")
    path.chmod(0o600)
    return path


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A real self-signed certificate and its unencrypted key, made by openssl."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def expected_line(case: BadCase, path: Path) -> tuple[str, str]:
    """(prefix the problem line must start with, text it must contain)."""
    if not case.line:
        prefix = f"{path}: "  # a file-level problem
    elif not case.key:
        prefix = f"{path}:{case.line}:"  # a YAML syntax error, followed by its column
    else:
        prefix = f"{path}:{case.line}: {case.key}: "
    return prefix, case.cause.format(dir=path.parent)


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.name for c in BAD_CASES])
def test_bad_config_gives_one_clear_problem(
    case: BadCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_dir: Path
) -> None:
    monkeypatch.delenv("EDGEWATCH_TEST_UNSET_PW", raising=False)
    path = write_config(tmp_path, case.text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = info.value.lines()
    assert len(lines) == 1, lines
    prefix, cause = expected_line(case, path)
    assert lines[0].startswith(prefix), (lines[0], prefix)
    assert cause in lines[0]
    assert CAMERA_PASSWORD not in lines[0]
    assert MQTT_PASSWORD not in lines[0]
    assert "31415926" not in lines[0]


def test_all_problems_reported_in_one_pass(tmp_path: Path, shared_dir: Path) -> None:
    text = (
        "cameras:\n"  # 1
        "  - id: a\n"  # 2
        "    url: {video}\n"  # 3
        "    max_fps: fast\n"  # 4
        "  - id: a\n"  # 5
        "    url: ftp://cam/x\n"  # 6
        "model:\n"  # 7
        "  path: missing.onnx\n"  # 8
        "  backend: trt\n"  # 9
        "  max_batch: yes\n"  # 10
        "mqtt:\n"  # 11
        "  qos: 5\n"  # 12
        "  colour: blue\n"  # 13
    )
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    got = [(p.line, p.key) for p in info.value.problems]
    assert got == [
        (4, "cameras[0].max_fps"),
        (5, "cameras[1].id"),
        (6, "cameras[1].url"),
        (8, "model.path"),
        (9, "model.backend"),
        (10, "model.max_batch"),
        (12, "mqtt.qos"),
        (13, "mqtt.colour"),
    ]
    assert all(line.startswith(f"{path}:") for line in info.value.lines())
    assert str(info.value).count("\n") == len(got) - 1


def test_unreadable_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"node: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)
    many = write_config(tmp_path, "a: 1\n---\nb: 2\n", "two.yaml")
    with pytest.raises(ConfigError, match=r"two.yaml:2:1: invalid YAML: expected a single"):
        load_config(many)


@pytest.mark.parametrize("name", ["cameras.yaml", "demo.yaml", "jetson.yaml"])
def test_example_configs_load(name: str, shared_dir: Path) -> None:
    config = load_config_with_warnings(REPO / "configs" / name).config
    assert config.source == REPO / "configs" / name
    assert config.model.path.resolve() == MODEL_ONNX.resolve()
    assert config.enabled_cameras
    for camera in config.cameras:
        url = camera.url.reveal()
        if "://" not in url and not url.startswith("/dev/"):
            assert Path(url).is_file()


def test_demo_config_values(shared_dir: Path) -> None:
    config = load_config(REPO / "configs" / "demo.yaml")
    assert len(config.enabled_cameras) == 4
    assert all(Path(c.url.reveal()).parent.resolve() == VIDEOS.resolve() for c in config.cameras)
    assert config.model.backend is BackendKind.ONNXRUNTIME
    assert config.model.providers == ("CPUExecutionProvider",)
    assert config.model.max_batch == 4
    assert (config.mqtt.host, config.mqtt.port) == ("127.0.0.1", 1883)
    assert config.monitoring.stats_interval_s == 2.0
    assert config.monitoring.metrics_port == 9108


def test_full_example_maps_every_section(shared_dir: Path) -> None:
    config = load_config(REPO / "configs" / "cameras.yaml")
    gate = config.cameras[0]
    assert gate.display_url == "rtsp://***@192.168.1.64:554/Streaming/Channels/101"
    assert gate.max_fps == 10.0
    assert isinstance(gate.max_fps, float)
    assert gate.classes == ("person", "bicycle", "car", "motorcycle", "bus", "truck")
    assert config.cameras[1].classes == (0,)
    assert config.cameras[2].url.reveal() == "/dev/video0"
    assert not config.cameras[2].enabled
    assert config.model.tensorrt.precision is Precision.FP16
    assert config.model.tensorrt.engine_cache_dir == Path("/var/cache/edgewatch/engines")
    assert config.mqtt.tls is None
    assert config.mqtt.password is None
    assert config.node == "gate-box-01"
    assert gate.decoder is Decoder.FFMPEG


def test_jetson_example_decodes_in_hardware(shared_dir: Path) -> None:
    config = load_config_with_warnings(REPO / "configs" / "jetson.yaml").config
    assert {c.id: (c.decoder, c.codec) for c in config.cameras} == {
        "gate": (Decoder.JETSON, None),
        "yard": (Decoder.JETSON, VideoCodec.H265),
        "replay": (Decoder.JETSON, None),
    }


def test_nvdec_reads_streams_and_files(tmp_path: Path, shared_dir: Path) -> None:
    text = (
        "cameras:\n"
        "  - id: gate\n    url: rtsp://10.0.0.5/live\n    decoder: nvdec\n"
        "  - id: replay\n    url: {video}\n    decoder: nvdec\n" + _MODEL
    )
    config = load_config(write_config(tmp_path, text))
    assert [c.decoder for c in config.cameras] == [Decoder.NVDEC, Decoder.NVDEC]


def test_relative_paths_resolve_against_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_dir: Path
) -> None:
    folder = tmp_path / "etc" / "edgewatch"
    (folder / "secrets").mkdir(parents=True)
    (folder / "secrets" / "mqtt.pw").write_text(f"{MQTT_PASSWORD}\n", encoding="utf-8")
    (folder / "secrets" / "mqtt.pw").chmod(0o600)
    self_signed(folder, "ca")
    model = os.path.relpath(MODEL_ONNX, folder)
    video = os.path.relpath(VIDEO, folder)
    text = (
        f"cameras:\n  - id: cam1\n    url: {video}\n"
        f"model:\n  path: {model}\n"
        "  tensorrt:\n    engine_cache_dir: cache/engines\n"
        "mqtt:\n  username: edge\n  password_file: secrets/mqtt.pw\n"
        "  tls:\n    ca_file: ca.crt\n"
    )
    path = write_config(folder, text)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path(os.path.relpath(path, elsewhere)))
    assert config.model.path == Path(os.path.normpath(folder / model))
    assert config.model.path.samefile(MODEL_ONNX)
    assert Path(config.cameras[0].url.reveal()).samefile(VIDEO)
    assert config.model.tensorrt.engine_cache_dir == folder / "cache" / "engines"
    assert config.mqtt.tls == TlsConfig(ca_file=folder / "ca.crt")
    assert config.mqtt.password == Secret(MQTT_PASSWORD)  # file content, stripped


def test_password_from_environment(tmp_path: Path, shared_dir: Path) -> None:
    text = _BASE + "mqtt:\n  username: edge\n  password_env: EDGEWATCH_MQTT_PASSWORD\n"
    path = write_config(tmp_path, text)
    config = load_config(path, env={"EDGEWATCH_MQTT_PASSWORD": MQTT_PASSWORD})
    assert config.mqtt.password is not None
    assert config.mqtt.password.reveal() == MQTT_PASSWORD
    with pytest.raises(ConfigError, match="EDGEWATCH_MQTT_PASSWORD is empty"):
        load_config(path, env={"EDGEWATCH_MQTT_PASSWORD": ""})


def test_secrets_never_in_errors_or_repr(tmp_path: Path, shared_dir: Path) -> None:
    url = f"rtsp://admin:{CAMERA_PASSWORD}@10.0.0.5:554/live"
    good = write_config(
        tmp_path,
        f"cameras:\n  - id: cam1\n    url: {url}\n"
        + _MODEL
        + f"mqtt:\n  username: edge\n  password: {MQTT_PASSWORD}\n",
        "good.yaml",
    )
    config = load_config(good)
    assert config.cameras[0].url.reveal() == url
    assert config.mqtt.password == Secret(MQTT_PASSWORD)
    shown = f"{config!r} {config} {config.cameras[0].display_url}"
    assert CAMERA_PASSWORD not in shown
    assert MQTT_PASSWORD not in shown
    # Broken around the secrets: every problem is reported, no secret is echoed.
    bad = write_config(
        tmp_path,
        f"cameras:\n  - id: cam1\n    url: rtsp://admin:{CAMERA_PASSWORD}@:99/x\n"
        f"  - id: cam2\n    url: gopher://admin:{CAMERA_PASSWORD}@h/x\n"
        f"  - id: cam3\n    url: rtsp:/admin:{CAMERA_PASSWORD}@h/x\n"
        f"  - id: cam4\n    url: [{CAMERA_PASSWORD}]\n"
        f"  - id: rtsp://admin:{CAMERA_PASSWORD}@h/x\n    url: cam5\n"
        + _MODEL
        + f"mqtt:\n  password: [{MQTT_PASSWORD}]\n  pasword: {MQTT_PASSWORD}\n",
        "bad.yaml",
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    text = str(info.value)
    assert len(info.value.problems) == 8, text
    assert CAMERA_PASSWORD not in text
    assert MQTT_PASSWORD not in text
    assert "mqtt.pasword: unknown key (did you mean 'password'?)" in text


def test_world_readable_secret_file_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, shared_dir: Path
) -> None:
    text = _BASE + f"mqtt:\n  username: edge\n  password: {MQTT_PASSWORD}\n"
    path = write_config(tmp_path, text)
    assert load_config_with_warnings(path).warnings == ()
    path.chmod(0o644)
    (warning,) = load_config_with_warnings(path).warnings
    assert warning.file == str(path)
    assert "mqtt.password" in warning.message
    assert "0644" in warning.message
    assert f"chmod 640 {path}" in warning.hint
    assert MQTT_PASSWORD not in warning.render()
    with caplog.at_level(logging.WARNING, logger="daemon.config.load"):
        load_config(path)
    (record,) = caplog.records
    assert record.__dict__["file"] == str(path)
    assert "chmod 640" in record.__dict__["hint"]
    # No secret in the file, nothing to warn about whatever the mode.
    plain = write_config(tmp_path, _BASE, "plain.yaml")
    plain.chmod(0o644)
    assert load_config_with_warnings(plain).warnings == ()


def test_readable_password_file_and_camera_credentials_warn(
    tmp_path: Path, shared_dir: Path
) -> None:
    secret = tmp_path / "mqtt.pw"
    secret.write_text(MQTT_PASSWORD, encoding="utf-8")
    secret.chmod(0o644)
    text = (
        f"cameras:\n  - id: cam1\n    url: rtsp://admin:{CAMERA_PASSWORD}@10.0.0.5/live\n"
        + _MODEL
        + "mqtt:\n  username: edge\n  password_file: mqtt.pw\n"
    )
    path = write_config(tmp_path, text)
    path.chmod(0o604)
    warnings = load_config_with_warnings(path).warnings
    assert [w.file for w in warnings] == [str(path), str(secret)]
    assert "cameras[0].url" in warnings[0].message


def test_yaml_conveniences(tmp_path: Path, shared_dir: Path) -> None:
    """Top-level ``x-`` keys hold anchors for merge keys; ``tls: {}`` is TLS with system CAs."""
    text = (
        "x-camera-defaults: &defaults\n  max_fps: 5\n  classes: [person]\n"
        "cameras:\n"
        "  - <<: *defaults\n    id: cam1\n    url: {video}\n"
        "  - <<: *defaults\n    id: cam2\n    url: {video}\n    max_fps: 2\n"
        + _MODEL
        + "mqtt:\n  tls: {{}}\n"
    )
    config = load_config(write_config(tmp_path, text))
    first, second = config.cameras
    assert (first.id, first.max_fps, first.classes) == ("cam1", 5.0, ("person",))
    assert (second.id, second.max_fps, second.classes) == ("cam2", 2.0, ("person",))
    assert config.mqtt.tls == TlsConfig()
    # Only at the top level: elsewhere an x- key is a typo like any other.
    nested = write_config(tmp_path, _CAM + "    x-note: hi\n" + _MODEL, "nested.yaml")
    with pytest.raises(ConfigError, match=r"nested.yaml:4: cameras\[0\].x-note: unknown key"):
        load_config(nested)


def _app(*cameras: CameraConfig, port: int = 1883) -> AppConfig:
    return AppConfig(
        cameras=cameras,
        model=ModelConfig(path=MODEL_ONNX),
        mqtt=MqttConfig(port=port),
        node="test",
    )


def test_diff_cameras() -> None:
    a = CameraConfig("a", Secret("rtsp://u:p@h/a"))
    b = CameraConfig("b", Secret("rtsp://h/b"))
    c = CameraConfig("c", Secret("rtsp://h/c"), enabled=False)
    d = CameraConfig("d", Secret("rtsp://h/d"))
    old = _app(a, b, c, d)
    b2 = dataclasses.replace(b, max_fps=5.0)
    c2 = dataclasses.replace(c, enabled=True)
    e = CameraConfig("e", Secret("/dev/video0"))
    new = _app(e, c2, b2, dataclasses.replace(a, url=Secret("rtsp://u:p@h/a")))
    diff = diff_cameras(old, new)
    assert [x.id for x in diff.added] == ["e", "c"]
    assert diff.removed == ("d",)
    assert diff.changed == (b2,)
    assert diff.unchanged == ("a",)
    assert diff.restart_required == ()
    assert not diff.empty
    # A changed password in the URL is a change; the diff holds no plain secret text.
    a3 = dataclasses.replace(a, url=Secret("rtsp://u:other@h/a"))
    assert diff_cameras(old, _app(a3, b, c, d)).changed == (a3,)
    assert "other" not in repr(diff_cameras(old, _app(a3, b, c, d)))
    # Disabling is removal.
    assert diff_cameras(old, _app(a, b, dataclasses.replace(d, enabled=False))).removed == ("d",)
    assert diff_cameras(old, old).empty


def test_diff_names_sections_needing_restart() -> None:
    cam = CameraConfig("a", Secret("rtsp://h/a"))
    old = _app(cam)
    more = diff_cameras(old, _app(cam, CameraConfig("b", Secret("rtsp://h/b"))))
    assert more.restart_required == ()
    assert diff_cameras(old, _app(cam, port=8883)).restart_required == ("mqtt",)
    moved = dataclasses.replace(old, model=ModelConfig(path=MODEL_ONNX, max_batch=2), node="n2")
    diff = diff_cameras(old, moved)
    assert diff.restart_required == ("model", "node")
    assert diff.empty


@pytest.mark.parametrize("kind", ["device", "fifo", "oversized"])
def test_config_reads_are_bounded(tmp_path: Path, kind: str) -> None:
    """A device, a FIFO (no writer) or a huge file is refused before it is read in full."""
    if kind == "device":
        path, cause = Path("/dev/zero"), "/dev/zero: not a regular file"
    elif kind == "fifo":
        path, cause = tmp_path / "cameras.yaml", f"{tmp_path}/cameras.yaml: not a regular file"
        os.mkfifo(path)
    else:
        path = tmp_path / "cameras.yaml"
        path.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1), encoding="utf-8")
        cause = f"{path}: larger than {MAX_CONFIG_BYTES} bytes"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (line,) = info.value.lines()
    assert line.startswith(cause), line


def test_camera_count_is_bounded(tmp_path: Path, shared_dir: Path) -> None:
    cameras = "".join(f"  - id: c{i}\n    url: {{video}}\n" for i in range(MAX_CAMERAS + 1))
    path = write_config(tmp_path, "cameras:\n" + cameras + _MODEL)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.lines() == [
        f"{path}:1: cameras: {MAX_CAMERAS + 1} cameras; at most {MAX_CAMERAS} per daemon "
        "(each camera is its own reader process)"
    ]
    at_limit = "".join(f"  - id: c{i}\n    url: {{video}}\n" for i in range(MAX_CAMERAS))
    assert len(load_config(write_config(tmp_path, "cameras:\n" + at_limit + _MODEL)).cameras) == (
        MAX_CAMERAS
    )


def test_tls_files_the_broker_connection_could_not_load(tmp_path: Path, shared_dir: Path) -> None:
    """What ``run`` failed on with an ssl.SSLError traceback is a config problem with its line."""
    cert, key = self_signed(tmp_path, "box")
    other_cert, _ = self_signed(tmp_path, "other")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("this is not a certificate\n", encoding="utf-8")
    good = _BASE + f"mqtt:\n  tls:\n    ca_file: {other_cert}\n    cert_file: {cert}\n"
    good += f"    key_file: {key}\n"
    assert load_config(write_config(tmp_path, good)).mqtt.tls == TlsConfig(other_cert, cert, key)

    bad_ca = write_config(tmp_path, _BASE + f"mqtt:\n  tls:\n    ca_file: {text_file}\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad_ca)
    (line,) = info.value.lines()
    assert line.startswith(f"{bad_ca}:8: mqtt.tls.ca_file: not a CA certificate file (PEM): ")

    mismatch = good.replace(f"cert_file: {cert}", f"cert_file: {other_cert}")
    path = write_config(tmp_path, mismatch)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (line,) = info.value.lines()
    assert line.startswith(f"{path}:9: mqtt.tls.cert_file: cannot load the client certificate")
