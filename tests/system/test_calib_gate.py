"""``edgewatch calibrate``: a real quantization whose accuracy gate fails leaves no model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from calib.evaluate import MapReport
from calib.gate import GateResult
from calib.kernels import QdqKernels, RuntimeRecord, runtime_record
from daemon.cli import main
from daemon.commands.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from engines.qdq import int8_activations_to_uint8, non_8bit_dequantize_inputs, summarize


@pytest.fixture(scope="module")
def small_sets(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """8 calibration images and 8 labelled evaluation images (the gate's cost is per image)."""
    root = tmp_path_factory.mktemp("sets")
    calib = root / "calib"
    evald = root / "eval"
    for folder in (calib, evald / "images", evald / "labels"):
        folder.mkdir(parents=True)
    src = shared_dir / "datasets"
    for p in sorted((src / "coco_calib" / "images").glob("*.jpg"))[:8]:
        shutil.copy(p, calib / p.name)
    for p in sorted((src / "coco_eval" / "images").glob("*.jpg"))[:8]:
        shutil.copy(p, evald / "images" / p.name)
        label = src / "coco_eval" / "labels" / f"{p.stem}.txt"
        if label.is_file():
            shutil.copy(label, evald / "labels" / label.name)
    return calib, evald


def _calibrate(model: Path, images: Path, out: Path, *extra: str) -> int:
    """``edgewatch calibrate --model M --images I --out O [extra...]``; the exit status."""
    return main(
        ["calibrate", "--model", str(model), "--images", str(images), "--out", str(out), *extra]
    )


def test_failed_gate_exits_1_and_keeps_the_old_model(
    model_onnx: Path,
    small_sets: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calib, evald = small_sets
    out = tmp_path / "yolov8n.int8.onnx"
    out.write_bytes(b"previously deployed model")
    # MinMax ranges from 8 images are a deliberately poor calibration: measured 2.5 points
    # lost on these 8 evaluation images, well over the 0.5 allowed here.
    code = _calibrate(
        model_onnx, calib, out, "--method", "minmax",
        "--labels", str(evald / "labels"), "--eval-images", str(evald / "images"),
        "--max-map-drop", "0.5", "--threads", "2",
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == EXIT_FAILURE
    assert "FAIL" in printed.out
    assert "speed_ratio=" in printed.out
    # Both INT8 scores, and the kernels the verdict is about (ort-cpu: ORT's integer ones).
    assert "| int8 integer mAP50-95=" in printed.out
    assert "| int8 fake-quant mAP50-95=" in printed.out
    assert f"gate on {runtime_record().label('integer')}: drop=" in printed.out
    assert "exceeds --max-map-drop" in printed.err
    assert out.read_bytes() == b"previously deployed model"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_passing_run_writes_tensorrt_compatible_model(
    model_onnx: Path, small_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    calib, _ = small_sets
    out = tmp_path / "m.int8.onnx"
    code = _calibrate(model_onnx, calib, out, "--method", "minmax")
    assert code == 0
    model = onnx.load(str(out))
    summary = summarize(model)
    assert summary.tensorrt_compatible
    # TensorRT's parser takes only 8-bit DequantizeLinear inputs: biases stay float.
    assert non_8bit_dequantize_inputs(model) == []
    assert summary.quantized_op_types.get("Conv", 0) >= 60
    meta = {p.key: p.value for p in model.metadata_props}
    brightness = json.loads(meta["edgewatch.calibration_brightness"])
    assert brightness["frames"] == 8
    assert 0 < brightness["p0"] <= brightness["p100"] < 255
    record = json.loads(meta["edgewatch.int8"])
    assert record["float_blocks"] == ["decode"]
    assert set(record["libraries"]) == {"onnxruntime", "onnx", "numpy", "opencv"}
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["int8"]["float_nodes"] > 50
    assert report["int8"]["bias"] == "float"
    ort_view = summarize(int8_activations_to_uint8(model))
    assert ort_view.int8_activations == 0
    assert ort_view.uint8_activations == summary.int8_activations


def test_bad_input_exits_2(tmp_path: Path, model_onnx: Path) -> None:
    out = tmp_path / "o.onnx"
    assert _calibrate(tmp_path / "none.onnx", tmp_path, out) == EXIT_USAGE
    assert _calibrate(model_onnx, tmp_path, out) == EXIT_USAGE
    assert not out.exists()


def test_calibration_feeds_the_models_own_input_name(
    model_onnx: Path, small_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    calib, _ = small_sets
    model = onnx.load(str(model_onnx))
    (graph_input,) = model.graph.input
    old = graph_input.name
    graph_input.name = "frames"
    for node in model.graph.node:
        node.input[:] = ["frames" if name == old else name for name in node.input]
    renamed = tmp_path / "renamed.onnx"
    onnx.save(model, str(renamed))
    out = tmp_path / "renamed.int8.onnx"
    assert _calibrate(renamed, calib, out, "--method", "minmax", "--max-images", "2") == 0
    assert [i.name for i in onnx.load(str(out)).graph.input] == ["frames"]


@pytest.fixture(scope="module")
def wrong_labels(
    shared_dir: Path, small_sets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Label folders an operator can pass by mistake for the 8 evaluation images."""
    _, evald = small_sets
    root = tmp_path_factory.mktemp("wrong")
    truth = sorted((evald / "labels").glob("*.txt"))
    empty = root / "empty"
    shuffled = root / "shuffled"
    for folder in (empty, shuffled):
        folder.mkdir()
    for n, label in enumerate(truth):
        (empty / label.name).write_text("")
        # Another image's boxes under this image's name: files match, content does not.
        shutil.copy(truth[(n + 1) % len(truth)], shuffled / label.name)
    return {
        "other data set": shared_dir / "datasets" / "coco_calib" / "labels",
        "image folder": evald / "images",
        "empty files": empty,
        "other images' labels": shuffled,
    }


def _error_line(stderr: str) -> str:
    """The one operator-facing error line (log lines go to stderr too)."""
    (line,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return line


@pytest.mark.parametrize(
    "case",
    [
        ("other data set", "no label file"),
        ("image folder", "no label file"),
        ("empty files", "hold no boxes"),
        ("other images' labels", "FP32 mAP50-95"),
    ],
    ids=lambda case: case[0],
)
def test_gate_that_measures_nothing_is_an_error(
    model_onnx: Path,
    small_sets: tuple[Path, Path],
    wrong_labels: dict[str, Path],
    *,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, str],
) -> None:
    calib, evald = small_sets
    which, reason = case
    out = tmp_path / "yolov8n.int8.onnx"
    code = _calibrate(
        model_onnx, calib, out, "--method", "minmax", "--threads", "2",
        "--labels", str(wrong_labels[which]), "--eval-images", str(evald / "images"),
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == EXIT_USAGE
    assert "PASS" not in printed.out
    line = _error_line(printed.err)
    assert reason in line
    assert line.endswith(f"{out} not written")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("which", ["other data set", "empty files"])
def test_evaluate_without_ground_truth_is_an_error(
    model_onnx: Path,
    small_sets: tuple[Path, Path],
    wrong_labels: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    which: str,
) -> None:
    _, evald = small_sets
    code = main(
        ["evaluate", "--model", str(model_onnx), "--images", str(evald / "images"),
         "--labels", str(wrong_labels[which])]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == EXIT_USAGE
    assert "mAP" not in printed.out
    assert str(wrong_labels[which]) in _error_line(printed.err)


def _map(map50_95: float) -> MapReport:
    return MapReport(map50_95, map50_95 + 0.15, 128, 898, 71)


def test_gate_judges_the_kernels_it_is_told_and_reports_every_score() -> None:
    scores: dict[QdqKernels, MapReport] = {"integer": _map(0.4002), "fake-quant": _map(0.3969)}
    runtime = RuntimeRecord("avx2", "1.32.0")
    by_kernels = {
        qdq: GateResult(_map(0.4080), scores, qdq, 1.0, runtime)
        for qdq in ("integer", "fake-quant")
    }
    assert by_kernels["integer"].passed
    assert not by_kernels["fake-quant"].passed
    assert by_kernels["fake-quant"].drop_points == pytest.approx(1.11)
    report = by_kernels["fake-quant"].report()
    assert report["gated_on"] == "fake-quant"
    assert report["runtime"] == {"cpu_int8_isa": "avx2", "onnxruntime": "1.32.0"}
    assert report["int8"]["integer"]["map50_95"] == 0.4002
    assert report["drop_points"]["integer"] == pytest.approx(0.78)
    assert json.loads(json.dumps(report)) == report
    assert (
        by_kernels["fake-quant"]
        .summary()
        .endswith(
            "gate on fake-quant kernels, avx2, onnxruntime 1.32.0: drop=1.11 points (max 1) FAIL"
        )
    )


def test_evaluate_names_the_kernels_and_runtime(
    model_onnx: Path,
    small_sets: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, evald = small_sets
    out = tmp_path / "eval.json"
    code = main(
        ["evaluate", "--model", str(model_onnx), "--images", str(evald / "images"),
         "--labels", str(evald / "labels"), "--qdq-kernels", "fake-quant", "--threads", "2",
         "--json", str(out)]
    )  # fmt: skip
    assert code == EXIT_OK
    runtime = runtime_record()
    assert capsys.readouterr().out.rstrip().endswith(f"({runtime.label('fake-quant')})")
    result = json.loads(out.read_text())
    assert result["qdq_kernels"] == "fake-quant"
    assert result["runtime"] == {
        "cpu_int8_isa": runtime.cpu_int8_isa,
        "onnxruntime": runtime.onnxruntime,
    }
    assert result["map50_95"] > 0.2
