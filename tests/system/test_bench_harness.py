"""Bench harness smoke tests: well-formed JSON with positive numbers, never timed assertions.

``bench backend`` runs for about a second per point on the CPU; ``bench e2e`` runs the real
daemon against a real RTSP server and mosquitto for a few seconds. The measuring subscriber
is checked against a real broker with payloads whose timing the test controls.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench.e2e import camera_videos, pipeline_input_hw
from bench.subscriber import Subscriber
from daemon.cli import main
from tests.harness.broker import Mosquitto


def test_camera_videos_cycle_over_the_clips(videos: list[Path]) -> None:
    cams = camera_videos(videos, len(videos) + 2)
    assert list(cams)[:2] == ["cam00", "cam01"]
    assert cams[f"cam{len(videos):02d}"] == sorted(videos)[0]


def test_pipeline_input_hw_is_the_rect_canvas(videos: list[Path]) -> None:
    # Every shared clip is 16:9, so the batcher letterboxes them to 384x640.
    assert pipeline_input_hw(videos) == (384, 640)


def test_bench_backend_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "backend.json"
    rc = main(["bench", "backend", "--batch", "1,2", "--seconds", "0.5", "--imgsz", "384x640",
               "--threads", "1", "--json", str(out)])  # fmt: skip
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["kind"] == "backend"
    assert data["input_hw"] == [384, 640]
    points = {(r["batch"], r["images"]) for r in data["results"]}
    assert points == {(1, "random"), (1, "real"), (2, "random"), (2, "real")}
    for r in data["results"]:
        assert r["images_per_s"] > 0
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p95"]
        assert r["calls"] >= 5


def test_bench_backend_bad_model_is_exit_2(tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    assert main(["bench", "backend", "--model", str(bogus), "--batch", "1"]) == 2


@pytest.mark.mqtt
def test_subscriber_counts_only_inside_the_window(mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto.port, "edgewatch", "node1")
    pub = mqtt.Client(CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    try:
        topic = "edgewatch/node1/{}/{}"

        def frame(cam: str) -> None:
            body = {"camera": cam, "capture_ts": time.time() - 0.05, "detections": []}
            pub.publish(topic.format(cam, "detections"), json.dumps(body), qos=1).wait_for_publish(
                5
            )

        def stats(cam: str, dropped: int) -> None:
            body = {"camera": cam, "dropped_total": dropped}
            pub.publish(topic.format(cam, "stats"), json.dumps(body), qos=1).wait_for_publish(5)

        stats("b", 0)  # stats say nothing of whether a camera streams
        frame("a")  # before the window: not counted
        stats("a", 10)
        deadline = time.monotonic() + 5
        while sub.messages < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sub.streaming() == 1
        sub.open_window()
        for _ in range(3):
            frame("a")
        frame("b")
        stats("a", 14)
        pub.publish("edgewatch/node1/a/detections", b"{not json", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        # 3 before the window, 4 frames, 1 stats, 1 malformed: wait for all of them.
        while sub.messages < 9 and time.monotonic() < deadline:
            time.sleep(0.02)
        measure = sub.close_window()
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.close()
    assert sub.streaming() == 2
    by_cam = {c.camera: c for c in measure.cameras}
    assert by_cam["a"].delivered == 3
    assert by_cam["b"].delivered == 1
    assert by_cam["a"].dropped == 4
    assert by_cam["b"].dropped == 0
    assert measure.malformed == 1
    assert measure.latency_ms_p50 is not None
    assert measure.latency_ms_p50 >= 50.0
    assert measure.total_fps > 0


@pytest.mark.rtsp
@pytest.mark.mqtt
def test_bench_e2e_smoke_writes_json(tmp_path: Path, shared_dir: Path) -> None:
    out = tmp_path / "e2e.json"
    rc = main(["bench", "e2e", "--cameras", "2", "--duration", "8", "--warmup", "1",
               "--backend-seconds", "1", "--threads", "1", "--json", str(out),
               "--workdir", str(tmp_path / "work")])  # fmt: skip
    assert rc == 0, (tmp_path / "work" / "cams2" / "ours.log").read_text()[-2000:]
    data = json.loads(out.read_text())
    assert data["kind"] == "e2e"
    assert data["cameras"] == 2
    assert data["theirs"] is None
    ours = data["ours"]
    assert ours["total_fps"] > 0
    assert {c["camera"] for c in ours["cameras"]} == {"cam00", "cam01"}
    assert all(c["delivered"] > 0 for c in ours["cameras"])
    assert ours["latency_ms"]["p50"] > 0
    assert ours["resources"]["cpu_percent"] > 0
    assert ours["resources"]["processes"] >= 3  # the daemon and one reader per camera
    assert ours["resources"]["pss_mb_mean"] > 0
    assert data["backend"]["results"][0]["images_per_s"] > 0
    assert data["efficiency"]["value"] > 0
