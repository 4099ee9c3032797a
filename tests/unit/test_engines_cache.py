"""Engine cache keys and manifests: a mismatched engine is never offered (no TensorRT needed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from daemon.config.model import Precision, TensorRTRuntime
from engines.cache import (
    CacheHit,
    CacheMiss,
    EngineCache,
    EngineKey,
    EngineManifest,
    ManifestError,
    Platform,
    describe_differences,
    manifest_path,
    mismatch_message,
    pack_calibration_cache,
    unpack_calibration_cache,
    verify_engine,
    write_engine,
)
from engines.plan import BatchProfile

ORIN = Platform("10.3.0.30", "Orin", (8, 7))
T4 = Platform("10.8.0.43", "Tesla T4", (7, 5))
KEY = EngineKey("ab" * 32, Precision.FP16, BatchProfile(1, 8, 8), (640, 640), ORIN)


def test_digest_is_stable_and_sensitive_to_every_field() -> None:
    assert KEY.digest() == dataclasses.replace(KEY).digest()
    variants = [
        dataclasses.replace(KEY, onnx_sha256="cd" * 32),
        dataclasses.replace(KEY, precision=Precision.INT8),
        dataclasses.replace(KEY, batch=BatchProfile(1, 4, 8)),
        dataclasses.replace(KEY, input_hw=(480, 480)),
        dataclasses.replace(KEY, platform=dataclasses.replace(ORIN, trt_version="10.3.0.31")),
        dataclasses.replace(KEY, platform=dataclasses.replace(ORIN, board="Jetson Orin Nano")),
        dataclasses.replace(KEY, platform=dataclasses.replace(ORIN, multiprocessors=8)),
        dataclasses.replace(
            KEY, platform=dataclasses.replace(ORIN, runtime=TensorRTRuntime.TENSORRT_RTX)
        ),
        dataclasses.replace(KEY, platform=dataclasses.replace(ORIN, gpu_name="Orin Nano")),
        dataclasses.replace(KEY, platform=dataclasses.replace(ORIN, compute_capability=(8, 6))),
    ]
    digests = {v.digest() for v in variants} | {KEY.digest()}
    assert len(digests) == len(variants) + 1
    assert len({v.file_stem() for v in variants}) == len(variants)


def test_mismatch_message_names_versions_and_gpus() -> None:
    wanted = dataclasses.replace(KEY, platform=T4)
    message = mismatch_message(Path("/c/x.engine"), KEY, wanted)
    assert "built for TensorRT 10.3.0.30 on Orin (sm_87)" in message
    assert "this is TensorRT 10.8.0.43 on Tesla T4 (sm_75)" in message
    diffs = describe_differences(KEY, wanted)
    assert len(diffs) == 2
    assert describe_differences(KEY, KEY) == []


def test_describe_differences_model_precision_profile() -> None:
    wanted = dataclasses.replace(
        KEY, onnx_sha256="cd" * 32, precision=Precision.INT8, batch=BatchProfile(1, 4, 4)
    )
    text = " | ".join(describe_differences(KEY, wanted))
    assert "model sha256 abababababab" in text
    assert "precision fp16, configured int8" in text
    assert "batch profile 1:8:8, configured 1:4:4" in text


def test_manifest_roundtrip_and_validation() -> None:
    manifest = EngineManifest(
        KEY, "e.engine", "00" * 32, 3, "2026-01-01T00:00:00Z", "m.onnx", ("note",)
    )
    assert EngineManifest.from_json(manifest.to_json()) == manifest
    broken = json.loads(manifest.to_json())
    del broken["key"]["trt_version"]
    with pytest.raises(ManifestError):
        EngineManifest.from_json(json.dumps(broken))
    with pytest.raises(ManifestError):
        EngineManifest.from_json("not json")


def test_write_then_lookup_hits(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    path = cache.engine_path(KEY)
    write_engine(path, KEY, b"plan-bytes", Path("m.onnx"), ("n",))
    assert manifest_path(path).is_file()
    found = cache.lookup(KEY)
    assert isinstance(found, CacheHit)
    assert found.engine == path
    assert found.manifest.engine_bytes == len(b"plan-bytes")
    assert not list(path.parent.glob(".*.tmp"))


def test_lookup_on_other_platform_misses_and_explains(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    write_engine(cache.engine_path(KEY), KEY, b"plan", Path("m.onnx"))
    wanted = dataclasses.replace(KEY, platform=T4)
    found = cache.lookup(wanted)
    assert isinstance(found, CacheMiss)
    assert found.engine == cache.engine_path(wanted)
    assert len(found.reasons) == 1
    assert "Orin" in found.reasons[0]
    assert "Tesla T4" in found.reasons[0]


def test_lookup_ignores_other_models(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    other = dataclasses.replace(KEY, onnx_sha256="ee" * 32)
    write_engine(cache.engine_path(other), other, b"plan", Path("o.onnx"))
    found = cache.lookup(KEY)
    assert isinstance(found, CacheMiss)
    assert found.reasons == ()


def test_truncated_or_swapped_engine_is_refused(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    path = cache.engine_path(KEY)
    write_engine(path, KEY, b"plan-bytes", Path("m.onnx"))
    path.write_bytes(b"plan-by")
    found = cache.lookup(KEY)
    assert isinstance(found, CacheMiss)
    assert "does not match its manifest" in found.reasons[0]


def test_engine_under_right_name_with_wrong_manifest_is_refused(tmp_path: Path) -> None:
    # An engine copied in from another box under this box's file name still carries its
    # own manifest, and that is what is checked.
    cache = EngineCache(tmp_path)
    foreign = dataclasses.replace(KEY, platform=T4)
    path = cache.engine_path(KEY)
    write_engine(path, foreign, b"plan", Path("m.onnx"))
    with pytest.raises(ManifestError, match="Tesla T4"):
        verify_engine(path, KEY)
    path.with_suffix(".json").unlink()
    with pytest.raises(ManifestError, match="no manifest"):
        verify_engine(path, KEY)


def test_orin_modules_and_runtimes_never_share_an_engine(tmp_path: Path) -> None:
    """AGX Orin, Orin NX and Orin Nano all report "Orin" and sm_87."""
    nx = dataclasses.replace(ORIN, board="NVIDIA Jetson Orin NX", multiprocessors=8)
    nano = dataclasses.replace(ORIN, board="NVIDIA Jetson Orin Nano", multiprocessors=8)
    built = dataclasses.replace(KEY, platform=nx)
    write_engine(EngineCache(tmp_path).engine_path(built), built, b"plan", Path("m.onnx"))
    miss = EngineCache(tmp_path).lookup(dataclasses.replace(KEY, platform=nano))
    assert isinstance(miss, CacheMiss)
    nx_name = "TensorRT 10.3.0.30 on NVIDIA Jetson Orin NX (Orin) (sm_87, 8 SMs)"
    assert f"GPU {nx_name}" in miss.reasons[0]
    rtx = dataclasses.replace(nx, runtime=TensorRTRuntime.TENSORRT_RTX)
    (reason,) = describe_differences(built, dataclasses.replace(KEY, platform=rtx))[:1]
    assert reason == "runtime tensorrt, configured tensorrt-rtx"


def test_calibration_cache_belongs_to_one_model() -> None:
    blob = pack_calibration_cache("ab" * 32, b"TRT-1003-EntropyCalibration2\nimages: 3c010a14\n")
    assert unpack_calibration_cache("ab" * 32, blob) == (
        b"TRT-1003-EntropyCalibration2\nimages: 3c010a14\n"
    )
    assert unpack_calibration_cache("cd" * 32, blob) is None
    # A bare TensorRT cache (written by another tool) is not trusted either.
    assert unpack_calibration_cache("ab" * 32, b"TRT-1003-EntropyCalibration2\n") is None
