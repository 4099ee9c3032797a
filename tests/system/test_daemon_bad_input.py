"""Bad input through the whole daemon.

Operator mistakes that stop the start (config, model file, an unavailable backend) give one
clear line and exit status 2, never a traceback; ``build-engine`` without TensorRT exits as
``run`` does. Bad cameras do not stop anything: next to a
good RTSP camera, a closed port and a host name that does not resolve report
``reconnecting``/``down`` with a masked reason, a clip that changes resolution mid-way and a
clip with corrupt bytes in the middle keep producing detections whose boxes lie inside the
frame, and the process never crashes. Unit-level cases (39 bad configs, engine cache
mismatches) live in tests/unit/test_config.py and tests/unit/test_engines_cache.py.
"""

from __future__ import annotations

import importlib
import random
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from daemon.commands.exit_codes import EXIT_USAGE
from tests.fixtures.observe import ObservedDaemon, cheap_cameras, payloads
from tests.harness.broker import free_port
from tests.harness.daemon import daemon_config, edgewatch_executable, write_config
from tests.harness.rtsp import RtspServer
from tests.system.test_check_config_cli import model_with_names

PREFIX = "badinput"
SECRET = "Cam3raPw-leak-check"
# A source clip with people and cars at 25 fps (cheap to decode).
SOURCE_CLIP = "traffic_cctv_road_360p.mp4"


def _run(config: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [edgewatch_executable(), "--log-level", "warning", "run", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _config(tmp_path: Path, model: Path, clip: Path, **model_extra: object) -> Path:
    path = tmp_path / "cameras.yaml"
    document = daemon_config(
        {"file": str(clip)},
        model,
        mqtt_port=free_port(),
        metrics_port=free_port(),
        model_extra=model_extra,
    )
    write_config(path, document)
    return path


def _assert_clear_refusal(result: subprocess.CompletedProcess[str], *words: str) -> None:
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    for word in words:
        assert word in output, output


def _ffmpeg(*args: str) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args],
        check=True,
        timeout=120,
    )


def _clip(source: Path, target: Path, start_s: float, seconds: float, size: str) -> None:
    """An H.264 MPEG-TS cut of ``source`` scaled to ``size``, a keyframe every 10 frames."""
    _ffmpeg(
        "-ss", str(start_s), "-t", str(seconds), "-i", str(source), "-an",
        "-vf", f"scale={size.replace('x', ':')}", "-c:v", "libx264", "-preset", "ultrafast",
        "-g", "10", "-f", "mpegts", str(target),
    )  # fmt: skip


def test_missing_model_file(tmp_path: Path, videos: list[Path]) -> None:
    result = _run(_config(tmp_path, tmp_path / "nope.onnx", videos[0]))
    _assert_clear_refusal(result, "model.path", "file not found")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_model_file(
    tmp_path: Path, videos: list[Path], model_onnx: Path, damage: str
) -> None:
    model = tmp_path / "yolov8n.onnx"
    if damage == "garbage":
        model.write_bytes(random.Random(6).randbytes(1 << 16))
    else:
        model.write_bytes(model_onnx.read_bytes()[: model_onnx.stat().st_size // 3])
    result = _run(_config(tmp_path, model, videos[0]))
    _assert_clear_refusal(result, "model", "not a loadable ONNX model")


@pytest.mark.parametrize(
    ("mistake", "expected"),
    [
        ("malformed", "cameras.yaml:"),
        ("unknown_key", "capture.read_timeout:"),
        ("wrong_type", "model.max_batch:"),
    ],
)
def test_bad_config(
    tmp_path: Path, videos: list[Path], model_onnx: Path, mistake: str, expected: str
) -> None:
    config = _config(tmp_path, model_onnx, videos[0])
    if mistake == "malformed":
        config.write_text("cameras:\n  - id: a\n    url: [unclosed\nmodel: {path: x}\n")
    else:
        document = yaml.safe_load(config.read_text())
        if mistake == "unknown_key":
            document["capture"]["read_timeout"] = 2
        else:
            document["model"]["max_batch"] = "eight"
        write_config(config, document)
    _assert_clear_refusal(_run(config), expected)


def test_class_the_model_lacks(tmp_path: Path, videos: list[Path], model_onnx: Path) -> None:
    # Valid YAML; only the loaded model can tell that it has no class "persn".
    config = _config(tmp_path, model_onnx, videos[0])
    document = yaml.safe_load(config.read_text())
    document["cameras"][0]["classes"] = ["person", "persn"]
    write_config(config, document)
    _assert_clear_refusal(_run(config), "cameras[file].classes", "'persn'")


def _tensorrt_usable() -> bool:
    # An empty ``tensorrt`` namespace folder (left by a stub wheel) is not TensorRT.
    try:
        module = importlib.import_module("tensorrt")
    except ImportError:
        return False
    return hasattr(module, "Builder")


@pytest.mark.skipif(_tensorrt_usable(), reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt(
    tmp_path: Path, videos: list[Path], model_onnx: Path
) -> None:
    refused = _run(_config(tmp_path, model_onnx, videos[0], backend="tensorrt"))
    _assert_clear_refusal(refused, "tensorrt", "fallback_to_onnxruntime")

    config = _config(
        tmp_path,
        model_onnx,
        videos[0],
        backend="tensorrt",
        tensorrt={"fallback_to_onnxruntime": True},
    )
    ran = _run(config, "--duration", "4")
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output[-3000:]
    assert "FALLING BACK to ONNX Runtime" in output
    assert "level=error" in output  # loud: an error-level line, not a quiet info
    assert "Traceback" not in output


@pytest.mark.skipif(_tensorrt_usable(), reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_exits_like_run(tmp_path: Path, model_onnx: Path) -> None:
    # `run` with backend tensorrt and no TensorRT: test_tensorrt_backend_without_tensorrt.
    result = subprocess.run(
        [
            edgewatch_executable(),
            "build-engine",
            "--model",
            str(model_onnx),
            "--precision",
            "fp16",
            "--cache-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "cannot build a TensorRT engine here" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.rtsp
@pytest.mark.mqtt
def test_bad_cameras_never_stop_the_good_ones(
    tmp_path: Path, *, rtsp_server: RtspServer, videos: list[Path], observed_daemon: ObservedDaemon
) -> None:
    source = next(v for v in videos if v.name == SOURCE_CLIP)
    # Resolution change mid-stream: 320x240 then 640x480, one MPEG-TS file.
    small, large = tmp_path / "small.ts", tmp_path / "large.ts"
    _clip(source, small, 0, 3, "320x240")
    _clip(source, large, 3, 3, "640x480")
    changing = tmp_path / "changing.ts"
    changing.write_bytes(small.read_bytes() + large.read_bytes())
    # Corrupt frames: random bytes over the middle fifth of a 6 s clip (150 frames).
    corrupt = tmp_path / "corrupt.ts"
    _clip(source, corrupt, 0, 6, "640x360")
    data = bytearray(corrupt.read_bytes())
    start, end = len(data) * 2 // 5, len(data) * 3 // 5
    rng = random.Random(6)
    for offset in range(start, end, 4096):
        data[offset : offset + 512] = rng.randbytes(512)
    corrupt.write_bytes(bytes(data))
    frames_in_corrupt_clip = 150

    good = cheap_cameras(rtsp_server, videos, 1)[0]
    cameras = {
        "good": rtsp_server.url(good),
        "closedport": f"rtsp://admin:{SECRET}@127.0.0.1:{free_port()}/stream",
        "nohost": f"rtsp://admin:{SECRET}@camera-does-not-exist.invalid:554/stream",
        "changing": str(changing),
        "corrupt": str(corrupt),
    }
    daemon, sub = observed_daemon(cameras, PREFIX)
    daemon.wait_streaming(["good", "changing", "corrupt"])

    def corrupt_clip_passed_twice() -> bool:
        seqs = [p["seq"] for p in payloads(sub, "detections", "corrupt")]
        return bool(seqs) and max(seqs) > 2 * frames_in_corrupt_clip

    # Twice through the corrupt middle and the resolution change (6 s clips at 25 fps).
    daemon.wait_until(corrupt_clip_passed_twice, 60, "corrupt clip looped twice")
    health = daemon.healthz()
    assert daemon.running
    assert health["cameras"]["good"] == "streaming"
    assert health["cameras"]["changing"] == "streaming"
    assert health["cameras"]["corrupt"] == "streaming"
    for bad in ("closedport", "nohost"):
        assert health["cameras"][bad] in ("reconnecting", "down"), health
        states = payloads(sub, "state", bad)
        reasons = [s["reason"] for s in states if s["state"] in ("reconnecting", "down")]
        assert reasons, states
        assert all("***@" in r and SECRET not in r for r in reasons), reasons

    for cid in ("good", "changing", "corrupt"):
        frames = payloads(sub, "detections", cid)
        assert len(frames) >= 5, cid
        boxes = 0
        for frame in frames:
            width, height = frame["frame"]["width"], frame["frame"]["height"]
            for det in frame["detections"]:
                x1, y1, x2, y2 = det["box"]
                assert 0 <= x1 <= x2 <= width, (cid, frame)
                assert 0 <= y1 <= y2 <= height, (cid, frame)
                boxes += 1
        assert boxes > 0, f"{cid}: no detections at all"
    changing_frames = payloads(sub, "detections", "changing")
    sizes = {(f["frame"]["width"], f["frame"]["height"]) for f in changing_frames}
    print(f"resolution-changing clip published at frame sizes {sorted(sizes)}")

    log = daemon.log_text()
    assert SECRET not in log
    assert "Traceback" not in log
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    "mistake", ["non_integer_names", "bad_ca_file", "ipv6_metrics", "port_in_use"]
)
def test_start_mistakes_are_one_line(
    tmp_path: Path, videos: list[Path], model_onnx: Path, mistake: str
) -> None:
    """Start mistakes found only while starting up are one line and exit 2, no traceback."""
    config = _config(tmp_path, model_onnx, videos[0])
    document = yaml.safe_load(config.read_text())
    with socket.socket() as busy:
        if mistake == "non_integer_names":
            model = model_with_names(model_onnx, tmp_path / "m.onnx", "{'a': 'person'}")
            document["model"]["path"] = str(model)
            expected: tuple[str, ...] = ("model", "'names' maps 'a' to 'person'")
        elif mistake == "bad_ca_file":
            ca_file = tmp_path / "ca.crt"
            ca_file.write_text("not a certificate\n", encoding="utf-8")
            document["mqtt"]["tls"] = {"ca_file": str(ca_file)}
            expected = ("mqtt.tls.ca_file:", "not a CA certificate file")
        elif mistake == "ipv6_metrics":
            document["monitoring"]["metrics_host"] = "::1"
            expected = ("monitoring.metrics_host:", "IPv4")
        else:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            document["monitoring"]["metrics_port"] = busy.getsockname()[1]
            expected = ("cannot listen on 127.0.0.1:", "Address already in use")
        write_config(config, document)
        _assert_clear_refusal(_run(config), *expected)
