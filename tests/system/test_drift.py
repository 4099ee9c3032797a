"""The daemon's drift check (``daemon.monitor.drift``) with the real FP32 model as reference:
agreement over the window, warnings and their rate limit, brightness against the calibrated
range, dropped samples when the worker is busy, the config rule, and the stats the running
daemon publishes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import onnx
import pytest

from daemon.batch.batcher import Batch
from daemon.batch.letterbox import letterbox_into
from daemon.capture.frame import FrameMeta
from daemon.capture.state import CameraState
from daemon.config.load import ConfigError, load_config
from daemon.config.model import DriftConfig, ModelConfig
from daemon.infer.backend import BackendError
from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend
from daemon.monitor.brightness import BRIGHTNESS_KEY, mean_luma
from daemon.monitor.drift import DriftMonitor, open_drift_monitor
from daemon.postprocess.yolo import Detections, decode_batch
from daemon.publish.camera_stats import CameraStats
from daemon.publish.schemas import load_schema
from tests.fixtures.broker import Subscriber
from tests.fixtures.observe import payloads
from tests.harness.broker import Mosquitto, free_port
from tests.harness.daemon import DaemonProcess, daemon_config

CONF = 0.25
# Street scenes with several objects each (coco_eval has some near-empty frames).
FRAMES = 6
WAIT_S = 30.0


class Clock:
    """A settable monotonic clock for the warning rate limit."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def main_backend(model_onnx: Path) -> Iterator[OnnxRuntimeBackend]:
    backend = OnnxRuntimeBackend(model_onnx, max_batch=8, intra_op_threads=2)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def frames(shared_dir: Path) -> list[np.ndarray]:
    """BGR frames of different sizes (coco_eval images, portrait and landscape)."""
    paths = sorted((shared_dir / "datasets" / "coco_eval" / "images").glob("*.jpg"))[:FRAMES]
    return [np.asarray(cv2.imread(str(p)), np.uint8) for p in paths]


def _batch(frames: list[np.ndarray], camera: str, hw: tuple[int, int] = (640, 640)) -> Batch:
    images = np.empty((len(frames), *hw, 3), np.uint8)
    geometries = tuple(letterbox_into(f, images[i]) for i, f in enumerate(frames))
    metas = tuple(
        FrameMeta(camera, i, time.time(), f.shape[1], f.shape[0]) for i, f in enumerate(frames)
    )
    return Batch(images, metas, geometries)


def _decode(backend: OnnxRuntimeBackend, batch: Batch) -> list[Detections]:
    return decode_batch(backend.infer(batch.images), batch.geometries, CONF, 0.7, 300)


def _stats(camera: str) -> CameraStats:
    return CameraStats(camera, 0.0, 1.0, CameraState.STREAMING, 0.0, 0.0, 0, 0, 0, 0, 0, 0, 0,
                       None, None)  # fmt: skip


def _monitor(
    model_onnx: Path,
    *,
    reference: Path | None = None,
    every: int = 1,
    min_agreement: float = 0.9,
    calibrated: tuple[float, float] | None = None,
    window: int = 50,
    min_samples: int = 10,
    warn_every_s: float = 300.0,
    clock: Callable[[], float] = time.monotonic,
) -> DriftMonitor:
    shadow = OnnxRuntimeBackend(reference or model_onnx, intra_op_threads=1, max_batch=1)
    drift = DriftConfig(
        enabled=True, reference_model=model_onnx, every_n_frames=every, min_agreement=min_agreement
    )
    model = ModelConfig(path=model_onnx, confidence=CONF, drift=drift)
    return DriftMonitor(
        shadow, model, calibrated, window=window, min_samples=min_samples,
        warn_every_s=warn_every_s, clock=clock,
    )  # fmt: skip


def _feed_one_by_one(
    monitor: DriftMonitor, batch: Batch, detections: list[Detections], every: int = 1
) -> None:
    """Observe frame by frame, waiting for each sample, so none is dropped."""
    start = monitor.compared + monitor.dropped
    for i in range(len(batch)):
        monitor.observe(_sub(batch, i, i + 1), detections[i : i + 1], CONF)
        _wait_for_samples(monitor, start + i // every + 1)


def _wait_for_samples(monitor: DriftMonitor, count: int) -> None:
    """Until ``count`` samples were checked or dropped (bounded)."""
    deadline = time.monotonic() + WAIT_S
    while monitor.compared + monitor.dropped < count:
        if time.monotonic() > deadline:
            raise TimeoutError("drift worker did not catch up")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def fixed_model(model_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """yolov8n.onnx with its input fixed to 1x3x640x640 (an export without dynamic axes)."""
    model = onnx.load(str(model_onnx))
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, (1, 3, 640, 640),
                          strict=True):  # fmt: skip
        dim.dim_value = value
    path = tmp_path_factory.mktemp("fixed") / "yolov8n-fixed.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("hw", [(640, 640), (480, 640)], ids=["square", "rect"])
def test_same_model_agrees_fully(
    model_onnx: Path, main_backend: OnnxRuntimeBackend, frames: list[np.ndarray],
    hw: tuple[int, int],
) -> None:  # fmt: skip
    """Also for minimal-padding (rect) batches, as the daemon makes for 16:9 cameras."""
    chosen = frames if hw[0] == hw[1] else [f for f in frames if f.shape[1] > f.shape[0]]
    batch = _batch(chosen, "cam", hw)
    detections = _decode(main_backend, batch)
    assert sum(len(d) for d in detections) > 5
    monitor = _monitor(model_onnx)
    try:
        _feed_one_by_one(monitor, batch, detections)
        drift = monitor.attach({"cam": _stats("cam")})["cam"].drift
    finally:
        monitor.close()
    assert drift is not None
    assert drift.samples == len(chosen)
    assert drift.agreement is not None
    assert drift.agreement >= 0.98
    assert monitor.dropped == 0
    assert monitor.worker_cpu_s > 0


def test_fixed_size_reference_for_rect_inputs_is_refused(
    model_onnx: Path, fixed_model: Path, main_backend: OnnxRuntimeBackend
) -> None:
    """Padding a rect sample to the reference's size changes the detections by itself
    (measured F1 0.88 against the rect result), which would read as drift."""
    drift = DriftConfig(enabled=True, reference_model=fixed_model)
    with pytest.raises(BackendError, match="dynamic axes"):
        open_drift_monitor(ModelConfig(path=model_onnx, drift=drift), main_backend)


def test_every_n_frames_and_sliding_window(
    model_onnx: Path, main_backend: OnnxRuntimeBackend, frames: list[np.ndarray]
) -> None:
    batch = _batch(frames, "cam")
    detections = _decode(main_backend, batch)
    monitor = _monitor(model_onnx, every=2, window=2)
    try:
        _feed_one_by_one(monitor, batch, detections, every=2)
        drift = monitor.attach({"cam": _stats("cam"), "idle": _stats("idle")})
    finally:
        monitor.close()
    assert monitor.compared == FRAMES // 2  # frames 0, 2, 4
    cam = drift["cam"].drift
    assert cam is not None
    assert cam.samples == 2  # the window keeps the last two
    idle = drift["idle"].drift
    assert idle is not None
    assert (idle.samples, idle.agreement, idle.brightness) == (0, None, None)


def test_disagreement_warns_once_per_period(
    model_onnx: Path, main_backend: OnnxRuntimeBackend, frames: list[np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    batch = _batch(frames, "cam")
    # A wrongly quantized model in miniature: the right boxes with the wrong classes.
    wrong = [Detections(d.boxes, d.scores, (d.class_ids + 1) % 80) for d in _decode(
        main_backend, batch)]  # fmt: skip
    clock = Clock()
    monitor = _monitor(model_onnx, min_agreement=0.5, min_samples=2, window=FRAMES,
                       warn_every_s=60.0, clock=clock)  # fmt: skip
    try:
        with caplog.at_level(logging.INFO, logger="daemon.monitor.drift"):
            _feed_one_by_one(monitor, _sub(batch, 0, 3), wrong[:3])
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1  # samples 2 and 3 are both bad: one warning
            assert warnings[0].__dict__["camera"] == "cam"
            clock.now += 61.0
            _feed_one_by_one(monitor, _sub(batch, 3, 4), wrong[3:4])
            assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
            drift = monitor.attach({"cam": _stats("cam")})["cam"].drift
    finally:
        monitor.close()
    assert drift is not None
    assert drift.agreement == 0.0


def _sub(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(batch.images[start:stop], batch.metas[start:stop], batch.geometries[start:stop])


def test_brightness_against_the_calibrated_range(
    model_onnx: Path, frames: list[np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    day = frames[:2]
    night = [f // 4 for f in day]
    day_luma = float(np.mean([mean_luma(f) for f in day]))
    none = [_no_detections()] * 2
    monitor = _monitor(model_onnx, every=1000, calibrated=(day_luma - 30, 255.0))
    try:
        with caplog.at_level(logging.INFO, logger="daemon.monitor.drift"):
            monitor.observe(_batch(night, "cam"), none, CONF)
            dark = monitor.attach({"cam": _stats("cam")})["cam"].drift
            assert [r.levelno for r in caplog.records].count(logging.WARNING) == 1
            monitor.observe(_batch(day, "cam"), none, CONF)
            fine = monitor.attach({"cam": _stats("cam")})["cam"].drift
            assert any("back inside" in r.getMessage() for r in caplog.records)
    finally:
        monitor.close()
    assert dark is not None
    assert fine is not None
    assert dark.brightness_in_range is False
    assert fine.brightness_in_range is True
    # Measured on the letterboxed image without its padding: the source frames' own luma.
    assert fine.brightness == pytest.approx(day_luma, abs=2.0)
    assert dark.brightness == pytest.approx(day_luma / 4, abs=2.0)


def _no_detections() -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def test_full_queue_drops_samples(
    model_onnx: Path, main_backend: OnnxRuntimeBackend, frames: list[np.ndarray]
) -> None:
    batch = _batch(frames, "cam")
    detections = _decode(main_backend, batch)
    monitor = _monitor(model_onnx)  # queue of 2, every frame sampled
    try:
        monitor.observe(batch, detections, CONF)  # 6 samples at once: the worker takes 1
        assert monitor.dropped >= FRAMES - 3
        _wait_for_samples(monitor, FRAMES)
    finally:
        monitor.close()


def test_open_reads_the_calibration_brightness(
    model_onnx: Path, main_backend: OnnxRuntimeBackend, tmp_path: Path, frames: list[np.ndarray]
) -> None:
    tagged = tmp_path / "tagged.onnx"
    model = onnx.load(str(model_onnx))
    entry = model.metadata_props.add()
    entry.key = BRIGHTNESS_KEY
    entry.value = json.dumps({"p0": 0.0, "p5": 1.0, "p50": 2.0, "p95": 3.0, "p100": 4.0,
                              "frames": 8})  # fmt: skip
    onnx.save(model, str(tagged))
    config = ModelConfig(path=tagged, drift=DriftConfig(enabled=True, reference_model=model_onnx))
    assert open_drift_monitor(ModelConfig(path=tagged), main_backend) is None
    monitor = open_drift_monitor(config, main_backend)
    assert monitor is not None
    try:
        monitor.observe(_batch(frames[:1], "cam"), [_no_detections()], CONF)
        drift = monitor.attach({"cam": _stats("cam")})["cam"].drift
    finally:
        monitor.close()
    assert drift is not None
    assert drift.brightness_in_range is False  # real frames are brighter than luma 4


def test_enabled_without_reference_is_a_config_error(tmp_path: Path, model_onnx: Path) -> None:
    path = tmp_path / "edgewatch.yaml"
    path.write_text(
        f"cameras:\n  - id: a\n    url: /dev/null\nmodel:\n  path: {model_onnx}\n"
        "  drift:\n    enabled: true\n",
        encoding="utf-8",
    )
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any("model.drift.reference_model" in line and "required" in line
               for line in info.value.lines())  # fmt: skip


@pytest.mark.mqtt
def test_daemon_publishes_drift_in_stats(
    mosquitto: Mosquitto, model_onnx: Path, videos: list[Path],
    run_daemon: Callable[..., DaemonProcess], mqtt_subscriber: Callable[..., Subscriber],
) -> None:  # fmt: skip
    sub = mqtt_subscriber(("drift/#",))
    video = next(v for v in videos if "360p" in v.name)  # cheap to decode
    document = daemon_config(
        {"cam": {"url": str(video), "max_fps": 5}}, model_onnx, mqtt_port=mosquitto.port,
        metrics_port=free_port(), prefix="drift", max_batch=1,
        model_extra={"drift": {"enabled": True, "reference_model": str(model_onnx),
                               "every_n_frames": 2, "calibrated_brightness": [1, 254]}},
    )  # fmt: skip
    daemon = run_daemon(document)

    def sampled(_: object) -> bool:
        return any((p.get("drift") or {}).get("samples", 0) > 0 for p in payloads(sub, "stats"))

    try:
        sub.wait_for(sampled, timeout=40.0)
    finally:
        daemon.stop()
    schema = load_schema("stats")
    stats = [p for p in payloads(sub, "stats") if p["drift"]["samples"] > 0]
    for payload in stats:
        jsonschema.validate(payload, schema)
    assert all(p["drift"]["agreement"] >= 0.95 for p in stats)  # the reference itself
    # An interval without processed frames (the last one, at shutdown) has no brightness.
    lit = [p["drift"] for p in stats if p["drift"]["brightness"] is not None]
    assert lit
    assert all(d["brightness_in_range"] is True and 1 <= d["brightness"] <= 254 for d in lit)
