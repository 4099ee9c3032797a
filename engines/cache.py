"""Engine cache: one serialized engine per (model, precision, profile, TensorRT, GPU).

A TensorRT plan only runs on the exact runtime, TensorRT version and GPU model it was built for;
loading it anywhere else fails with an opaque "serialized engine version" error, or worse.
Every engine therefore sits next to a small JSON manifest holding the full key it was built
for, and nothing is deserialized unless the manifest matches this machine exactly. Pure
logic: no TensorRT import, so it is unit-tested everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config.model import Precision, TensorRTRuntime
from engines.plan import BatchProfile

# Bump when the build itself changes what an engine contains for the same inputs (e.g. the
# uint8 input wrapping), so old engines stop matching.
KEY_SCHEMA = 2
ENGINE_SUFFIX = ".engine"
MANIFEST_SUFFIX = ".json"


class ManifestError(ValueError):
    """A manifest is missing fields or is not JSON; the engine beside it is not trusted."""


@dataclass(frozen=True)
class Platform:
    """Where an engine runs: the runtime and its exact build, and the GPU model.

    AGX Orin, Orin NX and Orin Nano all report the GPU name "Orin" and sm_87, yet differ in
    SM count and clocks, and TensorRT picks its kernels for the one it builds on: ``board``
    (the Jetson module name from the device tree, empty on a dGPU) and ``multiprocessors``
    keep their engines apart.
    """

    trt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    runtime: TensorRTRuntime = TensorRTRuntime.TENSORRT
    board: str = ""
    multiprocessors: int = 0

    @property
    def sm(self) -> str:
        major, minor = self.compute_capability
        return f"sm_{major}{minor}"

    def describe(self) -> str:
        name = "TensorRT-RTX" if self.runtime is TensorRTRuntime.TENSORRT_RTX else "TensorRT"
        gpu = f"{self.board} ({self.gpu_name})" if self.board else self.gpu_name
        sms = f", {self.multiprocessors} SMs" if self.multiprocessors else ""
        return f"{name} {self.trt_version} on {gpu} ({self.sm}{sms})"


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    precision: Precision
    batch: BatchProfile
    input_hw: tuple[int, int]
    platform: Platform
    schema: int = KEY_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "onnx_sha256": self.onnx_sha256,
            "precision": self.precision.value,
            "batch": [self.batch.min, self.batch.opt, self.batch.max],
            "input_hw": list(self.input_hw),
            "runtime": self.platform.runtime.value,
            "trt_version": self.platform.trt_version,
            "gpu_name": self.platform.gpu_name,
            "board": self.platform.board,
            "multiprocessors": self.platform.multiprocessors,
            "compute_capability": list(self.platform.compute_capability),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineKey:
        try:
            batch = data["batch"]
            hw = data["input_hw"]
            cc = data["compute_capability"]
            return cls(
                onnx_sha256=str(data["onnx_sha256"]),
                precision=Precision(data["precision"]),
                batch=BatchProfile(int(batch[0]), int(batch[1]), int(batch[2])),
                input_hw=(int(hw[0]), int(hw[1])),
                platform=Platform(
                    str(data["trt_version"]),
                    str(data["gpu_name"]),
                    (int(cc[0]), int(cc[1])),
                    TensorRTRuntime(data["runtime"]),
                    str(data["board"]),
                    int(data["multiprocessors"]),
                ),
                schema=int(data["schema"]),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ManifestError(f"engine key is incomplete or invalid: {exc}") from exc

    def digest(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def file_stem(self) -> str:
        """Readable and unique: ``fp16-b1x8x8-640x640-<16 hex>``."""
        b = self.batch
        h, w = self.input_hw
        return f"{self.precision.value}-b{b.min}x{b.opt}x{b.max}-{h}x{w}-{self.digest()[:16]}"


def describe_differences(built: EngineKey, wanted: EngineKey) -> list[str]:
    """What differs between the key an engine was built for and the one needed, in words."""
    diffs: list[str] = []
    if built.schema != wanted.schema:
        diffs.append(f"cache format {built.schema}, this edgewatch writes {wanted.schema}")
    built_p, wanted_p = built.platform, wanted.platform
    if built_p.runtime != wanted_p.runtime:
        diffs.append(f"runtime {built_p.runtime.value}, configured {wanted_p.runtime.value}")
    if built_p.trt_version != wanted_p.trt_version:
        diffs.append(f"TensorRT {built_p.trt_version}, this is {wanted_p.trt_version}")
    gpu_fields = ("gpu_name", "compute_capability", "board", "multiprocessors")
    if any(getattr(built_p, f) != getattr(wanted_p, f) for f in gpu_fields):
        diffs.append(f"GPU {built_p.describe()}, this is {wanted_p.describe()}")
    if built.onnx_sha256 != wanted.onnx_sha256:
        diffs.append(
            f"model sha256 {built.onnx_sha256[:12]}..., "
            f"configured model is {wanted.onnx_sha256[:12]}..."
        )
    if built.precision != wanted.precision:
        diffs.append(f"precision {built.precision.value}, configured {wanted.precision.value}")
    if built.batch != wanted.batch:
        diffs.append(f"batch profile {built.batch}, configured {wanted.batch}")
    if built.input_hw != wanted.input_hw:
        diffs.append(
            f"input {built.input_hw[0]}x{built.input_hw[1]}, "
            f"configured {wanted.input_hw[0]}x{wanted.input_hw[1]}"
        )
    return diffs


def mismatch_message(engine: Path, built: EngineKey, wanted: EngineKey) -> str:
    """One line naming what an unusable engine was built for and what this machine is."""
    diffs = describe_differences(built, wanted)
    return (
        f"engine {engine} was built for {built.platform.describe()}, "
        f"this is {wanted.platform.describe()}; differs in: {'; '.join(diffs)}"
    )


@dataclass(frozen=True)
class EngineManifest:
    key: EngineKey
    engine_file: str
    engine_sha256: str
    engine_bytes: int
    built_at: str
    source_model: str
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> str:
        return json.dumps(
            {
                "key": self.key.to_dict(),
                "engine_file": self.engine_file,
                "engine_sha256": self.engine_sha256,
                "engine_bytes": self.engine_bytes,
                "built_at": self.built_at,
                "source_model": self.source_model,
                "notes": list(self.notes),
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> EngineManifest:
        try:
            data = json.loads(text)
            return cls(
                key=EngineKey.from_dict(data["key"]),
                engine_file=str(data["engine_file"]),
                engine_sha256=str(data["engine_sha256"]),
                engine_bytes=int(data["engine_bytes"]),
                built_at=str(data["built_at"]),
                source_model=str(data["source_model"]),
                notes=tuple(str(n) for n in data.get("notes", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"invalid engine manifest: {exc}") from exc


def manifest_path(engine: Path) -> Path:
    """``x.engine`` -> ``x.json``: the manifest always sits beside its engine."""
    return engine.with_suffix(MANIFEST_SUFFIX)


def read_manifest(engine: Path) -> EngineManifest:
    path = manifest_path(engine)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ManifestError(f"no manifest {path} beside {engine}") from exc
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc
    return EngineManifest.from_json(text)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, whole.

    A daemon killed mid-write must never leave a truncated engine, manifest or cache file
    under the final name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_engine(
    engine_path: Path, key: EngineKey, plan: bytes, source_model: Path, notes: tuple[str, ...] = ()
) -> EngineManifest:
    """Store ``plan`` at ``engine_path`` with its manifest (engine first, manifest last, so a
    manifest only ever describes a complete engine)."""
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    manifest = EngineManifest(
        key=key,
        engine_file=engine_path.name,
        engine_sha256=hashlib.sha256(plan).hexdigest(),
        engine_bytes=len(plan),
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        source_model=str(source_model),
        notes=notes,
    )
    atomic_write(engine_path, plan)
    atomic_write(manifest_path(engine_path), manifest.to_json().encode())
    return manifest


@dataclass(frozen=True)
class CacheHit:
    engine: Path
    manifest: EngineManifest


@dataclass(frozen=True)
class CacheMiss:
    """No usable engine. ``reasons`` names every near miss (same model, other key) found."""

    engine: Path
    reasons: tuple[str, ...]


def verify_engine(engine: Path, wanted: EngineKey) -> EngineManifest:
    """Return the manifest of ``engine`` if it was built for exactly ``wanted`` and is intact;
    otherwise raise ``ManifestError`` with a message naming what differs."""
    manifest = read_manifest(engine)
    if manifest.key != wanted:
        raise ManifestError(mismatch_message(engine, manifest.key, wanted))
    data = engine.read_bytes()
    intact = hashlib.sha256(data).hexdigest() == manifest.engine_sha256
    if len(data) != manifest.engine_bytes or not intact:
        raise ManifestError(f"engine {engine} does not match its manifest (truncated or replaced)")
    return manifest


class EngineCache:
    """A folder of ``<stem>.engine`` + ``<stem>.json`` pairs."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def engine_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.file_stem()}{ENGINE_SUFFIX}"

    def lookup(self, key: EngineKey) -> CacheHit | CacheMiss:
        """Find the engine for ``key``; a miss explains near misses for the operator."""
        path = self.engine_path(key)
        if path.is_file():
            try:
                return CacheHit(path, verify_engine(path, key))
            except (ManifestError, OSError) as exc:
                return CacheMiss(path, (str(exc),))
        return CacheMiss(path, tuple(self._near_misses(key)))

    def _near_misses(self, key: EngineKey) -> list[str]:
        if not self.root.is_dir():
            return []
        reasons = []
        for candidate in sorted(self.root.glob(f"*{MANIFEST_SUFFIX}")):
            try:
                other = EngineManifest.from_json(candidate.read_text(encoding="utf-8"))
            except (ManifestError, OSError):
                continue
            if other.key.onnx_sha256 == key.onnx_sha256 and other.key != key:
                reasons.append(
                    mismatch_message(candidate.with_suffix(ENGINE_SUFFIX), other.key, key)
                )
        return reasons


_CALIBRATION_MAGIC = b"edgewatch-int8-calibration"


def pack_calibration_cache(model_sha256: str, table: bytes) -> bytes:
    """A calibration cache file: TensorRT's scale table behind a header naming the model.

    TensorRT's own cache records no model identity, so a cache left over from another model
    would silently give every tensor the wrong scale.
    """
    return b"%s %s\n%s" % (_CALIBRATION_MAGIC, model_sha256.encode(), table)


def unpack_calibration_cache(model_sha256: str, blob: bytes) -> bytes | None:
    """TensorRT's scale table from a file ``pack_calibration_cache`` wrote for this model, or
    None for a file of another model or in another format (the caller recalibrates)."""
    header, sep, table = blob.partition(b"\n")
    if not sep or header != b"%s %s" % (_CALIBRATION_MAGIC, model_sha256.encode()):
        return None
    return table
