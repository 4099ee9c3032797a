"""Tracking, zones and lines in the YAML: typed, inherited per camera, errors at file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config.errors import ConfigError
from daemon.config.load import load_config
from daemon.config.tracking import Coordinates, LineConfig, TrackingConfig, ZoneConfig
from daemon.track.checks import filter_problems
from tests.fixtures.data import MODEL_ONNX, REPO, VIDEOS

VIDEO = VIDEOS / "traffic_cctv_road_360p.mp4"

GOOD = """\
model:
  path: {model}
tracking:
  enabled: true
  min_hits: 2
  lost_after_s: 0.5
cameras:
  - id: door
    url: {video}
    zones:
      - name: entrance
        points: [[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]]
        coordinates: normalized
        classes: [person]
        min_score: 0.4
        loiter_s: 30
    lines:
      - name: threshold
        points: [[0, 200], [640, 200]]
  - id: road
    url: {video}
    tracking:
      enabled: false
      publish_detections: false
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgewatch.yaml"
    path.write_text(text.format(model=MODEL_ONNX, video=VIDEO))
    return path


def test_zones_lines_and_per_camera_tracking_load(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, GOOD))
    door, road = config.cameras
    assert config.tracking_of(door) == TrackingConfig(enabled=True, min_hits=2, lost_after_s=0.5)
    assert config.tracking_of(road) == TrackingConfig(enabled=False, publish_detections=False)
    assert door.zones == (
        ZoneConfig(
            name="entrance",
            points=((0.1, 0.5), (0.9, 0.5), (0.9, 1.0), (0.1, 1.0)),
            coordinates=Coordinates.NORMALIZED,
            classes=("person",),
            min_score=0.4,
            loiter_s=30.0,
        ),
    )
    assert door.lines == (LineConfig("threshold", ((0.0, 200.0), (640.0, 200.0))),)


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("  lost_after_s: 0.5", "  lost_after_s: 0", 6, "tracking.lost_after_s: expected a number"),
        (
            "  min_hits: 2",
            "  min_hits: 2\n  low_threshold: 0.5",
            6,
            "tracking.low_threshold: must be <= high_threshold (0.25)",
        ),
        (
            "        points: [[0, 200], [640, 200]]",
            "        points: [[0, 200], [0, 200]]",
            19,
            "cameras[0].lines[0].points: expected two different [x, y] points",
        ),
        (
            "        points: [[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]]",
            "        points: [[0.1, 0.5], [0.9, 0.5], [0.9, 1.5]]",
            12,
            "cameras[0].zones[0].points: normalized coordinates must be in 0..1",
        ),
        (
            "      - name: threshold",
            "      - name: entrance",
            18,
            "cameras[0].lines: zone and line names must be unique: 'entrance' is used twice",
        ),
        ("        loiter_s: 30", "        loiter_s: -1", 16, "expected a positive number"),
        ("  - id: road", "  - id: road\n    zones: 3", 21, "cameras[1].zones: expected a list"),
    ],
)
def test_bad_tracking_values_name_file_line_and_key(
    tmp_path: Path, old: str, new: str, line: int, message: str
) -> None:
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = caught.value.lines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:{line}:"), lines
    assert message in lines[0]


def test_example_config_documents_the_defaults(shared_dir: Path) -> None:
    """configs/cameras.yaml writes every tracking key at its default value."""
    config = load_config(REPO / "configs" / "cameras.yaml")
    assert config.tracking == TrackingConfig()
    gate = config.cameras[0]
    assert [z.name for z in gate.zones] == ["driveway"]
    assert [ln.name for ln in gate.lines] == ["gate"]


def test_tracking_classes_the_model_lacks_are_config_problems(tmp_path: Path) -> None:
    """Class names are only known once the model is loaded: ``filter_problems`` (what
    ``run`` and a reload check before starting cameras) names each bad one."""
    text = GOOD.replace("classes: [person]", "classes: [unicorn]").replace(
        "  lost_after_s: 0.5", "  lost_after_s: 0.5\n  classes: [car, 99]"
    )
    config = load_config(_write(tmp_path, text))
    names = ("person", "bicycle", "car")
    assert filter_problems(config.cameras, names) == []  # without the tracking block
    assert filter_problems(config.cameras, names, config.tracking) == [
        "cameras[door].tracking.classes: the model has no class 99",
    ]
    fixed = text.replace("classes: [car, 99]", "classes: [car]")
    config = load_config(_write(tmp_path, fixed))
    assert filter_problems(config.cameras, names, config.tracking) == [
        "cameras[door].zones[entrance].classes: the model has no class 'unicorn'",
    ]
