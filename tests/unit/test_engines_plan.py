"""Version dispatch and batch-profile rules of the engine builder (no TensorRT needed)."""

from __future__ import annotations

import pytest

from daemon.config.model import Precision, TensorRTRuntime
from engines.plan import (
    BatchProfile,
    Int8Source,
    ModelTraits,
    TrtVersion,
    UnsupportedBuild,
    plan_build,
    resolve_profile,
)

FLOAT = ModelTraits(has_qdq=False, is_fp16=False)
QDQ = ModelTraits(has_qdq=True, is_fp16=False)
HALF = ModelTraits(has_qdq=False, is_fp16=True)
TRT10 = TrtVersion(10, 3, 0)
TRT11 = TrtVersion(11, 1, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.3.0.30", TrtVersion(10, 3, 0)),
        ("11.0", TrtVersion(11, 0, 0)),
        ("10.13.0.35+cuda12", TrtVersion(10, 13, 0)),
    ],
)
def test_version_parse(text: str, expected: TrtVersion) -> None:
    assert TrtVersion.parse(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "10", "v10.3"])
def test_version_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="TensorRT version"):
        TrtVersion.parse(text)


def test_trt10_fp16_uses_builder_flag_weakly_typed() -> None:
    plan = plan_build(TRT10, Precision.FP16, FLOAT)
    assert (plan.strongly_typed, plan.fp16_flag, plan.int8_flag) == (False, True, False)


def test_trt10_int8_from_qdq_sets_int8_and_fp16_without_calibrator() -> None:
    plan = plan_build(TRT10, Precision.INT8, QDQ)
    assert (plan.fp16_flag, plan.int8_flag, plan.int8_source) == (True, True, Int8Source.QDQ)


def test_trt10_int8_from_float_needs_calibration_images() -> None:
    with pytest.raises(UnsupportedBuild, match="calibration images"):
        plan_build(TRT10, Precision.INT8, FLOAT)
    plan = plan_build(TRT10, Precision.INT8, FLOAT, calibration_data=True)
    assert plan.int8_source is Int8Source.CALIBRATOR
    assert plan.int8_flag
    assert any("deprecated" in n for n in plan.notes)


def test_trt11_is_strongly_typed_without_precision_flags() -> None:
    for precision, traits in (
        (Precision.INT8, QDQ),
        (Precision.FP16, HALF),
        (Precision.FP32, FLOAT),
    ):
        plan = plan_build(TRT11, precision, traits)
        assert plan.strongly_typed
        assert not plan.fp16_flag
        assert not plan.int8_flag
        assert plan.int8_source is not Int8Source.CALIBRATOR


def test_trt11_int8_refuses_calibrator_even_with_images() -> None:
    with pytest.raises(UnsupportedBuild, match="Q/DQ model"):
        plan_build(TRT11, Precision.INT8, FLOAT, calibration_data=True)


@pytest.mark.parametrize(
    ("version", "runtime"),
    [(TRT11, TensorRTRuntime.TENSORRT), (TrtVersion(1, 7, 1), TensorRTRuntime.TENSORRT_RTX)],
)
def test_strongly_typed_fp16_converts_a_float32_model(
    version: TrtVersion, runtime: TensorRTRuntime
) -> None:
    converted = plan_build(version, Precision.FP16, FLOAT, runtime=runtime)
    assert converted.strongly_typed
    assert converted.convert_fp16
    native = plan_build(version, Precision.FP16, HALF, runtime=runtime)
    assert not native.convert_fp16
    with pytest.raises(UnsupportedBuild, match="float16 model"):
        plan_build(version, Precision.FP32, HALF, runtime=runtime)


def test_tensorrt_rtx_is_strongly_typed_at_any_version() -> None:
    rtx = TensorRTRuntime.TENSORRT_RTX
    plan = plan_build(TrtVersion(1, 7, 1), Precision.INT8, QDQ, runtime=rtx)
    assert (plan.strongly_typed, plan.int8_flag, plan.int8_source) == (True, False, Int8Source.QDQ)
    with pytest.raises(UnsupportedBuild, match=r"TensorRT-RTX 1\.7\.1 needs a Q/DQ model"):
        plan_build(TrtVersion(1, 7, 1), Precision.INT8, FLOAT, calibration_data=True, runtime=rtx)


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_qdq_model_only_builds_as_int8(version: TrtVersion) -> None:
    for precision, match in ((Precision.FP16, "fp16 was asked"), (Precision.FP32, "as fp32")):
        with pytest.raises(UnsupportedBuild, match=match):
            plan_build(version, precision, QDQ)


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_asymmetric_qdq_model_is_refused(version: TrtVersion) -> None:
    asymmetric = ModelTraits(has_qdq=True, is_fp16=False, qdq_asymmetric=True)
    with pytest.raises(UnsupportedBuild, match="edgewatch calibrate"):
        plan_build(version, Precision.INT8, asymmetric)


def test_trt8_refused() -> None:
    with pytest.raises(UnsupportedBuild, match=r"too old"):
        plan_build(TrtVersion(8, 6, 1), Precision.FP16, FLOAT)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:4:8", BatchProfile(1, 4, 8)),
        ("8", BatchProfile(1, 8, 8)),
        (" 2:2:2 ", BatchProfile(2, 2, 2)),
    ],
)
def test_batch_profile_parse(text: str, expected: BatchProfile) -> None:
    assert BatchProfile.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["", "1:8", "0:1:2", "4:2:8", "1:9:8", "a:b:c", "-1:2:3", "1:2:3:4"]
)
def test_batch_profile_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"batch profile"):
        BatchProfile.parse(text)


def test_resolve_profile_defaults_and_validates() -> None:
    assert resolve_profile(None, 6) == BatchProfile(1, 6, 6)
    assert resolve_profile((1, 4, 16), 8) == BatchProfile(1, 4, 16)
    with pytest.raises(ValueError, match="MAX below"):
        resolve_profile((1, 4, 4), 8)
    with pytest.raises(ValueError, match="start at 1"):
        resolve_profile((2, 8, 8), 8)
