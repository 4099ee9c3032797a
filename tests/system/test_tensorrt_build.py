"""Every graph edgewatch hands to TensorRT, parsed and built by NVIDIA's own ONNX parser and
builder: TensorRT-RTX's ahead-of-time build, which needs no GPU, through edgewatch's own
``engines.builder`` (the runtime module is its parameter). Each engine's I/O must be what
the TensorRT backend sizes its buffers for."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import tensorrt_rtx

from daemon.cli import main
from daemon.config.model import Precision, TensorRTRuntime
from daemon.infer.tensorrt_backend import buffer_specs, image_input
from engines.builder import BuildRequest, BuiltEngine, EngineBuildError, build_engine
from engines.cache import EngineCache, Platform, read_manifest
from engines.export import add_uint8_input, add_uint8_input_file, to_fp16
from engines.onnx_info import read_onnx_info
from engines.plan import BatchProfile, Int8Source
from engines.tensors import TensorSpec

# TensorRT-RTX compiles ahead of time for a named GPU generation: a T4 is sm_75.
T4_RTX = Platform(tensorrt_rtx.__version__, "Tesla T4", (7, 5), TensorRTRuntime.TENSORRT_RTX)
BATCH = BatchProfile(1, 4, 4)
HW = (640, 640)
EXPECTED_IO = (
    TensorSpec("images", True, (-1, 640, 640, 3), "UINT8"),
    TensorSpec("output0", False, (-1, 84, 8400), "FLOAT"),
)


def _build(model: Path, precision: Precision, cache: Path, hw: tuple[int, int] = HW) -> BuiltEngine:
    request = BuildRequest(
        onnx_path=model,
        precision=precision,
        batch=BATCH,
        input_hw=hw,
        workspace_mb=512,
        engine_path=cache / f"{model.stem}-{precision.value}.engine",
        timing_cache=cache / "timing.cache",
    )
    return build_engine(request, T4_RTX, read_onnx_info(model), tensorrt_rtx)


def _assert_backend_accepts(built: BuiltEngine, hw: tuple[int, int] = HW) -> None:
    """The backend's own sizing, fed the shapes the real engine declares: the input limit
    from the profile and the output as a context computes it for a full batch."""
    inp, shape = image_input(built.io, (BATCH.max, *hw, 3), BATCH.max, hw)
    outputs = {t.name: (BATCH.max, *t.shape[1:]) for t in built.io if not t.is_input}
    specs = buffer_specs(built.io, shape, outputs)
    assert inp.name == "images"
    assert specs[0].max_shape == (BATCH.max, *hw, 3)


def _assert_stored(built: BuiltEngine) -> None:
    assert built.engine_path.stat().st_size == built.engine_bytes > 1_000_000
    manifest = read_manifest(built.engine_path)
    assert manifest.key == built.key
    assert manifest.key.platform.runtime is TensorRTRuntime.TENSORRT_RTX


def test_fp32_model_builds_with_a_uint8_input(model_onnx: Path, tmp_path: Path) -> None:
    built = _build(model_onnx, Precision.FP32, tmp_path)
    assert built.io == EXPECTED_IO
    assert built.plan.strongly_typed
    _assert_stored(built)
    _assert_backend_accepts(built)


def test_exported_uint8_model_builds(model_onnx: Path, tmp_path: Path) -> None:
    wrapped = add_uint8_input_file(model_onnx, tmp_path / "yolov8n_uint8.onnx")
    built = _build(wrapped, Precision.FP32, tmp_path)
    assert built.io == EXPECTED_IO
    _assert_backend_accepts(built)


def test_letterbox_shaped_engine(model_onnx: Path, tmp_path: Path) -> None:
    built = _build(model_onnx, Precision.FP16, tmp_path, hw=(384, 640))
    assert built.io == (
        TensorSpec("images", True, (-1, 384, 640, 3), "UINT8"),
        TensorSpec("output0", False, (-1, 84, 5040), "FLOAT"),
    )
    _assert_backend_accepts(built, (384, 640))


def test_fp16_from_float32_and_from_an_fp16_model(model_onnx: Path, tmp_path: Path) -> None:
    converted = _build(model_onnx, Precision.FP16, tmp_path)
    assert converted.plan.convert_fp16
    half = tmp_path / "yolov8n_fp16.onnx"
    onnx.save(to_fp16(onnx.load(str(model_onnx))), str(half))
    assert read_onnx_info(half).traits.is_fp16
    native = _build(half, Precision.FP16, tmp_path)
    assert not native.plan.convert_fp16
    for built in (converted, native):
        assert built.io == EXPECTED_IO
        # Half the weight bytes of the float32 engine (16.1 MB).
        assert built.engine_bytes < 12_000_000
        _assert_backend_accepts(built)


def test_int8_model_from_calibrate_builds(
    model_onnx: Path, shared_dir: Path, tmp_path: Path
) -> None:
    int8 = tmp_path / "yolov8n.int8.onnx"
    images = shared_dir / "datasets" / "coco_calib" / "images"
    argv = ["calibrate", "--model", str(model_onnx), "--images", str(images), "--out", str(int8)]
    assert main([*argv, "--method", "minmax", "--max-images", "4"]) == 0
    built = _build(int8, Precision.INT8, tmp_path)
    assert built.plan.int8_source is Int8Source.QDQ
    assert built.io == EXPECTED_IO
    _assert_stored(built)
    _assert_backend_accepts(built)


def _parse_errors(model: onnx.ModelProto) -> list[str]:
    logger = tensorrt_rtx.Logger(tensorrt_rtx.Logger.ERROR)
    network = tensorrt_rtx.Builder(logger).create_network(0)
    parser = tensorrt_rtx.OnnxParser(network, logger)
    if parser.parse(model.SerializeToString()):
        return []
    return [parser.get_error(i).desc() for i in range(parser.num_errors)]


def test_static_uint8_rule_is_the_parsers_rule(model_onnx: Path) -> None:
    """The graph checks' uint8 rule says what NVIDIA's parser does: Transpose before Cast on
    a uint8 input is refused, Cast first is accepted."""
    wrapped = add_uint8_input(onnx.load(str(model_onnx)))
    assert _parse_errors(wrapped) == []
    transpose_first = onnx.ModelProto()
    transpose_first.CopyFrom(wrapped)
    nodes = transpose_first.graph.node
    cast, transpose = onnx.NodeProto(), onnx.NodeProto()
    cast.CopyFrom(nodes[0])
    transpose.CopyFrom(nodes[1])
    assert (cast.op_type, transpose.op_type) == ("Cast", "Transpose")
    # images -> Transpose -> Cast -> (the same Div): the order TensorRT refuses.
    transpose.input[0], transpose.output[0] = "images", "images_nhwc_to_nchw"
    cast.input[0], cast.output[0] = "images_nhwc_to_nchw", nodes[1].output[0]
    nodes[0].CopyFrom(transpose)
    nodes[1].CopyFrom(cast)
    errors = _parse_errors(transpose_first)
    assert any("UInt8" in e for e in errors), errors


def test_unbuildable_graph_is_one_build_error_not_a_traceback(
    model_onnx: Path, tmp_path: Path
) -> None:
    broken = onnx.load(str(model_onnx))
    broken.graph.node[0].op_type = "NoSuchOperator"
    path = tmp_path / "broken.onnx"
    onnx.save(broken, str(path))
    with pytest.raises(EngineBuildError, match="cannot parse"):
        _build(path, Precision.FP32, tmp_path)
    assert not list(EngineCache(tmp_path).root.glob("*.engine"))
