"""``edgewatch check-config`` through the real console script, in a subprocess.

A subset of tests/unit/test_config.py's bad-input table (each run costs about half a second):
exit status 2, exactly the one expected problem line on stderr, no traceback, no secret.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from tests.fixtures.data import MODEL_ONNX, REPO
from tests.unit.test_config import (
    BAD_CASES,
    CAMERA_PASSWORD,
    MQTT_PASSWORD,
    expected_line,
    write_config,
)

_CLI_CASES = (
    "yaml_syntax",
    "unknown_camera_key",
    "wrong_type_string",
    "duplicate_camera_id",
    "missing_model_file",
    "bad_url_scheme",
    "unknown_decoder",
)


def _edgewatch() -> str:
    script = Path(sys.executable).parent / "edgewatch"
    found = str(script) if script.exists() else shutil.which("edgewatch")
    if found is None:
        pytest.fail("console script 'edgewatch' not found; install the repo (pip install -e .)")
    return found


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_edgewatch(), "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=path.parent,
        env={k: v for k, v in os.environ.items() if not k.startswith("EDGEWATCH_TEST_")},
    )


@pytest.mark.parametrize("name", _CLI_CASES)
def test_bad_config_exits_2_with_one_line(name: str, tmp_path: Path, shared_dir: Path) -> None:
    (case,) = [c for c in BAD_CASES if c.name == name]
    path = write_config(tmp_path, case.text)
    result = check_config(path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    prefix, cause = expected_line(case, path)
    assert lines[0].startswith(prefix), (lines[0], prefix)
    assert cause in lines[0]
    assert CAMERA_PASSWORD not in result.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = check_config(tmp_path / "nope.yaml")
    assert result.returncode == 2
    assert result.stderr.strip() == f"{tmp_path / 'nope.yaml'}: cannot read config file: " + (
        "No such file or directory"
    )


def test_demo_config_ok(shared_dir: Path) -> None:
    result = check_config(REPO / "configs" / "demo.yaml")
    assert result.returncode == 0, result.stderr
    prefix, rest = result.stdout.split(" model ", 1)
    model, summary = rest.split(" ", 1)
    assert prefix == "OK: 4 cameras (4 enabled),"
    # The shared folder may be reached through a symlink: compare the files, not the spelling.
    assert Path(model).resolve() == MODEL_ONNX.resolve()
    assert summary == "(onnxruntime, input 640, max batch 4), broker 127.0.0.1:1883\n"


def test_nvdec_stream_config_ok(tmp_path: Path, shared_dir: Path) -> None:
    camera = "cameras:\n  - id: gate\n    url: rtsp://10.0.0.5/live\n    decoder: nvdec\n"
    result = check_config(write_config(tmp_path, camera + "model:\n  path: {model}\n"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 1 camera (1 enabled), model "), result.stdout


def test_jetson_config_ok(shared_dir: Path) -> None:
    result = check_config(REPO / "configs" / "jetson.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 3 cameras (3 enabled), model "), result.stdout
    assert "(tensorrt, input 640, max batch 4)" in result.stdout


def test_readable_secrets_warn_without_failing(tmp_path: Path, shared_dir: Path) -> None:
    text = (
        f"cameras:\n  - id: cam1\n    url: rtsp://admin:{CAMERA_PASSWORD}@10.0.0.5/live\n"
        f"model:\n  path: {{model}}\nmqtt:\n  username: edge\n  password: {MQTT_PASSWORD}\n"
    )
    path = write_config(tmp_path, text)
    path.chmod(0o644)
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 1 camera (1 enabled)")
    assert "level=warning" in result.stderr
    assert f"chmod 640 {path}" in result.stderr
    assert "cameras[0].url, mqtt.password" in result.stderr
    assert CAMERA_PASSWORD not in result.stderr + result.stdout
    assert MQTT_PASSWORD not in result.stderr + result.stdout


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_non_regular_file_is_one_line(tmp_path: Path, kind: str) -> None:
    """/dev/zero is not read to exhaustion and a FIFO without a writer does not hang."""
    path = Path("/dev/zero") if kind == "device" else tmp_path / "cameras.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    result = check_config(path)
    assert result.returncode == 2
    assert result.stderr == f"{path}: not a regular file\n"


def model_with_names(source: Path, target: Path, names: str) -> Path:
    """A copy of the real model whose ``names`` metadata is ``names``."""
    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == "names":
            prop.value = names
    onnx.save(model, str(target))
    return target


@pytest.mark.parametrize("kind", ["text", "empty", "random", "non_integer_names", "lacks_class"])
def test_what_only_the_model_tells_is_checked(
    tmp_path: Path, shared_dir: Path, model_onnx: Path, kind: str
) -> None:
    """What ``run`` found only after starting (or with a traceback), check-config finds."""
    model = tmp_path / "model.onnx"
    classes = "[person]"
    if kind == "text":
        model.write_text("this is not a model\n", encoding="utf-8")
    elif kind == "empty":
        model.write_bytes(b"")
    elif kind == "random":
        model.write_bytes(random.Random(10).randbytes(1 << 16))
    elif kind == "non_integer_names":
        model_with_names(model_onnx, model, "{'a': 'person', 'b': 'car'}")
    else:
        model, classes = model_onnx, "[person, unicorn]"
    text = f"cameras:\n  - id: cam1\n    url: {{video}}\n    classes: {classes}\nmodel:\n"
    path = write_config(tmp_path, text + f"  path: {model}\n")
    result = check_config(path)
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    expected = {
        "non_integer_names": f"{path}: model.path: model metadata 'names' maps 'a' to 'person'",
        "lacks_class": f"{path}: cameras[cam1].classes: the model has no class 'unicorn'",
    }.get(kind, f"{path}: model.path: {model} is not a loadable ONNX model: ")
    assert line.startswith(expected), line
