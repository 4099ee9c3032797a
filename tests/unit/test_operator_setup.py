"""What an operator installs and reads agrees with what the code does.

The systemd unit stops retrying on the exit status the CLI gives operator mistakes; the
documented install mode of the config passes the daemon's own permission rule (and a
writable one does not); the topic names configs/cameras.yaml documents are the ones
published; configs/demo.yaml follows EDGEWATCH_SHARED. (``build-engine`` and ``run`` giving
the same exit status when TensorRT is missing: tests/system/test_daemon_bad_input.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon.commands.exit_codes import EXIT_USAGE
from daemon.config.errors import ConfigError
from daemon.config.load import MAX_CONFIG_BYTES, load_config, load_config_with_warnings
from daemon.config.permissions import SECRETS_READABLE_BY_OTHERS, WRITABLE_BY_OTHERS
from daemon.config.rules import MAX_CAMERAS
from daemon.publish.topics import Topics
from tests.fixtures.data import REPO
from tests.unit.test_config import MQTT_PASSWORD, write_config

_BASE = "cameras:\n  - id: cam1\n    url: {video}\nmodel:\n  path: {model}\n"
_WITH_SECRET = _BASE + f"mqtt:\n  username: edge\n  password: {MQTT_PASSWORD}\n"


def _unit_values(key: str) -> list[str]:
    text = (REPO / "systemd" / "edgewatch.service").read_text(encoding="utf-8")
    return re.findall(rf"^{key}=(.*)$", text, re.MULTILINE)


def test_unit_does_not_restart_on_an_operator_mistake() -> None:
    assert _unit_values("Restart") == ["on-failure"]
    (prevent,) = _unit_values("RestartPreventExitStatus")
    assert str(EXIT_USAGE) in prevent.split()


def _documented_config_mode() -> int:
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    match = re.search(r"install -m (0[0-7]{3}) .*configs/cameras\.yaml", doc)
    assert match, "docs/deploy.md does not install configs/cameras.yaml with a mode"
    return int(match.group(1), 8)


def test_documented_install_mode_passes_the_permission_rule(
    tmp_path: Path, shared_dir: Path
) -> None:
    mode = _documented_config_mode()
    assert not mode & (WRITABLE_BY_OTHERS | SECRETS_READABLE_BY_OTHERS), oct(mode)
    installed = write_config(tmp_path, _WITH_SECRET)
    installed.chmod(mode)
    assert load_config_with_warnings(installed).warnings == ()


@pytest.mark.parametrize(
    ("text", "mode", "exposure"),
    [
        (_BASE, 0o666, "writable by group/others"),
        (_BASE, 0o620, "writable by group/others"),
        (_WITH_SECRET, 0o604, "readable by others"),
    ],
)
def test_exposed_config_warns(
    tmp_path: Path, shared_dir: Path, text: str, mode: int, exposure: str
) -> None:
    path = write_config(tmp_path, text)
    path.chmod(mode)
    (warning,) = load_config_with_warnings(path).warnings
    assert exposure in warning.message
    assert f"mode {mode:04o}" in warning.message
    assert MQTT_PASSWORD not in warning.render()


def test_documented_topics_are_published() -> None:
    doc = (REPO / "configs" / "cameras.yaml").read_text(encoding="utf-8")
    topics = Topics("p", "n")
    node_leaves = set(re.findall(r"<topic_prefix>/<node>/(\w+)\b(?!/)", doc))
    assert node_leaves == {topics.status.rsplit("/", 1)[1]}
    camera_leaves = set(re.findall(r"<topic_prefix>/<node>/<camera>/(\w+)", doc))
    camera_leaves |= set(re.findall(r"\.\.\./(\w+)", doc))
    published = {
        topics.detections("c").rsplit("/", 1)[1],
        topics.state("c").rsplit("/", 1)[1],
        topics.stats("c").rsplit("/", 1)[1],
    }
    assert camera_leaves
    assert camera_leaves <= published, camera_leaves


def test_demo_config_follows_edgewatch_shared(tmp_path: Path, shared_dir: Path) -> None:
    elsewhere = tmp_path / "data"
    elsewhere.mkdir()
    for folder in ("models", "videos"):
        (elsewhere / folder).symlink_to(shared_dir / folder)
    demo = REPO / "configs" / "demo.yaml"
    config = load_config(demo, env={"EDGEWATCH_SHARED": str(elsewhere)})
    paths = [config.model.path, *(Path(c.url.reveal()) for c in config.cameras)]
    assert all(p.is_relative_to(elsewhere) for p in paths), paths
    # Unset: the shared folder beside the checkout.
    default = load_config(demo, env={})
    assert default.model.path == (REPO.parent / "shared" / "models" / "yolov8n.onnx")


def test_unset_variable_in_a_path_is_one_problem(tmp_path: Path, shared_dir: Path) -> None:
    path = write_config(tmp_path, _BASE.replace("{model}", "${{NO_SUCH_VAR}}/m.onnx"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.lines() == [
        f"{path}:5: model.path: environment variable NO_SUCH_VAR is not set "
        "(write ${NO_SUCH_VAR:-DEFAULT} for one)"
    ]


def test_documented_config_limits_are_the_code_limits() -> None:
    doc = (REPO / "configs" / "cameras.yaml").read_text(encoding="utf-8")
    assert MAX_CONFIG_BYTES % (1 << 20) == 0
    limits = f"at most {MAX_CONFIG_BYTES >> 20} MiB with at most {MAX_CAMERAS} cameras"
    assert limits in doc
