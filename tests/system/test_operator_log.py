"""What an operator sees in the log, through the real daemon.

A normal start and a clean stop are INFO; every line on stderr is a record in the chosen
format (FFmpeg, OpenCV and ONNX Runtime included); a model that fails every inference
is logged once per window with a count rather than once per batch, and ``/healthz`` says
the daemon is not working; ``--fps-table`` prints the table once, on stdout.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from tests.harness.broker import Mosquitto, free_port
from tests.harness.daemon import DaemonProcess, daemon_config, edgewatch_executable, write_config

PREFIX = "oplog"
# Enough failed batches that a per-batch error line would be unmistakable.
FAILED_BATCHES = 30


def _model_failing_every_inference(path: Path) -> Path:
    """A YOLOv8-shaped ONNX model (float [N, 3, 640, 640] in, [N, 84, 8400] out) whose
    Reshape cannot succeed for any input: it loads, then every run fails inside ORT."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [-1, 84, 8401])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "shape"], ["output0"])],
        "fails",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 640, 640])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 84, 8400])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.mqtt
def test_failing_model_is_rate_limited_and_unhealthy(
    tmp_path: Path,
    *,
    mosquitto: Mosquitto,
    run_daemon: Callable[..., DaemonProcess],
    videos: list[Path],
) -> None:
    clip = next(v for v in videos if "360p" in v.name)
    cameras = {"file": str(clip), "closed": f"rtsp://127.0.0.1:{free_port()}/stream"}
    model = _model_failing_every_inference(tmp_path / "fails.onnx")
    document = daemon_config(
        cameras, model, mqtt_port=mosquitto.port, metrics_port=free_port(), prefix=PREFIX
    )
    daemon = run_daemon(document)

    def failing() -> bool:
        code, body = daemon.http_get("/healthz")
        return code == 503 and json.loads(body)["failed_batches_in_row"] >= FAILED_BATCHES

    daemon.wait_until(failing, 60, f"{FAILED_BATCHES} failed batches reported by /healthz")
    health = daemon.healthz()
    assert health["status"] == "unhealthy"
    assert "cannot be reshaped" in health["last_batch_error"]
    daemon.wait_until(
        lambda: daemon.healthz()["cameras"]["closed"] in ("reconnecting", "down"),
        30,
        "closed port reported",
    )
    assert daemon.stop() == 0

    lines = daemon.log_text().splitlines()
    raw = [line for line in lines if not line.startswith("{")]
    assert not raw, raw[:5]
    records = daemon.log_records()
    assert len(records) == len(lines)
    failed = [r for r in records if r["msg"] == "batch failed"]
    # One line per 10 s window, each after the first with the count held back in between.
    assert 1 <= len(failed) < FAILED_BATCHES // 3, len(failed)
    assert all(r["suppressed"] >= 1 for r in failed[1:]), failed
    assert failed[0]["level"] == "error"
    assert "cannot be reshaped" in failed[0]["error"]
    decoder = [r for r in records if r["msg"] == "decoder message"]
    assert decoder
    assert {r["camera"] for r in decoder} == {"closed"}
    states = [r for r in records if r["msg"] == "camera state"]
    normal = [
        r for r in states if r["state"] in ("starting", "streaming") or r["reason"] == "stopped"
    ]
    assert {(r["state"], r["reason"]) for r in normal} >= {
        ("starting", None),
        ("streaming", None),
        ("down", "stopped"),
    }
    assert {r["level"] for r in normal} == {"info"}


@pytest.mark.mqtt
def test_fps_table_is_printed_once(
    tmp_path: Path, *, mosquitto: Mosquitto, model_onnx: Path, videos: list[Path]
) -> None:
    clip = next(v for v in videos if "360p" in v.name)
    config = tmp_path / "cameras.yaml"
    document = daemon_config(
        {"file": str(clip)}, model_onnx, mqtt_port=mosquitto.port, metrics_port=free_port()
    )
    write_config(config, document)
    result = subprocess.run(
        [edgewatch_executable(), "run", "--config", str(config), "--duration", "4", "--fps-table"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    header = "in fps"
    assert result.stdout.count(header) >= 2  # a table per 1 s stats interval
    assert header not in result.stderr
    stats = [line for line in result.stderr.splitlines() if "msg=stats" in line]
    assert stats
    assert all("processed_fps=" in line for line in stats)
