"""What an engine build must do on a given runtime and version: pure decisions, no import of
TensorRT.

TensorRT 10.x builds *weakly typed* networks where builder flags enable FP16/INT8 kernels, and
still offers implicit INT8 calibration (deprecated since 10.1). TensorRT 11.x and TensorRT-RTX
have none of that: every network is strongly typed, the precision lives in the ONNX graph (FP16
tensors, or Q/DQ nodes for INT8). For FP16 there, edgewatch converts a float32 graph to float16
itself before parsing (``convert_fp16``). ``plan_build`` turns (runtime, version, precision,
what the model contains) into a ``BuildPlan`` the builder applies verbatim, or an
``UnsupportedBuild`` saying why not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from daemon.config.model import Precision, TensorRTRuntime


class UnsupportedBuild(ValueError):
    """The requested precision cannot be built from this model on this TensorRT version."""


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        """``"10.3.0.30"`` -> ``TrtVersion(10, 3, 0)``; raises ``ValueError`` on anything else."""
        match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(?:[.+-].*)?", text.strip())
        if match is None:
            raise ValueError(f"not a TensorRT version: {text!r}")
        return cls(int(match[1]), int(match[2]), int(match[3] or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


class Int8Source(str, Enum):
    """Where INT8 scales come from."""

    NONE = "none"
    # Explicit quantization: QuantizeLinear/DequantizeLinear nodes in the ONNX (calib issue).
    QDQ = "qdq"
    # Implicit quantization: TensorRT's entropy calibrator over sample images (TensorRT 10 only).
    CALIBRATOR = "calibrator"


@dataclass(frozen=True)
class BuildPlan:
    """How to configure the builder; applied as-is by ``engines.builder``."""

    strongly_typed: bool
    fp16_flag: bool
    int8_flag: bool
    int8_source: Int8Source
    notes: tuple[str, ...] = ()
    # Strongly typed FP16 from a float32 graph: convert the graph's weights and arithmetic to
    # float16 (I/O kept float32) before parsing.
    convert_fp16: bool = False


@dataclass(frozen=True)
class ModelTraits:
    """What the ONNX already carries, as found by ``engines.onnx_info``."""

    has_qdq: bool
    # The weights of every Conv/Gemm/MatMul are float16. Small float32 initializers such as
    # Resize scales may remain, as ModelOpt AutoCast and ONNX Runtime's converter keep them.
    is_fp16: bool
    # A Q/DQ model with uint8 activations or non-zero zero points (asymmetric quantization,
    # onnxruntime.quantization's default): TensorRT's explicit INT8 takes neither.
    qdq_asymmetric: bool = False


FIRST_SUPPORTED = TrtVersion(10, 0)
STRONG_TYPING_ONLY = TrtVersion(11, 0)


def plan_build(
    version: TrtVersion,
    precision: Precision,
    model: ModelTraits,
    calibration_data: bool = False,
    runtime: TensorRTRuntime = TensorRTRuntime.TENSORRT,
) -> BuildPlan:
    """Decide the build for ``precision`` on ``runtime`` at ``version``.

    ``calibration_data`` says whether images for the legacy INT8 calibrator are available; it
    is only consulted on TensorRT 10 for a model without Q/DQ nodes.
    """
    if runtime is TensorRTRuntime.TENSORRT and version < FIRST_SUPPORTED:
        raise UnsupportedBuild(
            f"TensorRT {version} is too old: edgewatch needs TensorRT 10.x or 11.x "
            "(JetPack 6 ships 10.3)"
        )
    _check_qdq_precision(precision, model)
    if runtime is TensorRTRuntime.TENSORRT_RTX:
        return _plan_strongly_typed(f"TensorRT-RTX {version}", precision, model)
    if version >= STRONG_TYPING_ONLY:
        return _plan_strongly_typed(f"TensorRT {version}", precision, model)
    return _plan_weakly_typed(version, precision, model, calibration_data)


def _check_qdq_precision(precision: Precision, model: ModelTraits) -> None:
    """Refuse, on every TensorRT version, a Q/DQ model TensorRT cannot take, and a non-INT8
    build of a Q/DQ model: the graph's Q/DQ nodes fix its precision, so asking for fp16 or
    fp32 is a mistake worth naming."""
    if model.has_qdq and model.qdq_asymmetric:
        raise UnsupportedBuild(
            "the Q/DQ model has uint8 activations or non-zero zero points (asymmetric "
            "quantization, as onnxruntime.quantization produces by default); TensorRT's "
            "explicit INT8 takes only symmetric int8. Quantize the FP32 model with "
            "`edgewatch calibrate` and build from its output"
        )
    if not model.has_qdq or precision is Precision.INT8:
        return
    if precision is Precision.FP16:
        raise UnsupportedBuild(
            "--precision fp16 was asked for a Q/DQ (INT8) model; build it with --precision int8"
        )
    raise UnsupportedBuild("a Q/DQ model cannot be built as fp32; use --precision int8")


def _plan_strongly_typed(runtime: str, precision: Precision, model: ModelTraits) -> BuildPlan:
    if precision is Precision.INT8:
        if not model.has_qdq:
            raise UnsupportedBuild(
                f"INT8 on {runtime} needs a Q/DQ model: strongly typed runtimes have no "
                "implicit calibration and no INT8 builder flag. Produce one with "
                "`edgewatch calibrate` and build from it."
            )
        return BuildPlan(True, False, False, Int8Source.QDQ)
    if precision is Precision.FP16 and not model.is_fp16:
        return BuildPlan(
            True,
            False,
            False,
            Int8Source.NONE,
            notes=(f"float32 graph converted to float16 for {runtime} (I/O kept float32)",),
            convert_fp16=True,
        )
    if precision is Precision.FP32 and model.is_fp16:
        raise UnsupportedBuild(
            f"--precision fp32 was asked for a float16 model; {runtime} builds a strongly "
            "typed network in the model's own types: use --precision fp16"
        )
    return BuildPlan(True, False, False, Int8Source.NONE)


def _plan_weakly_typed(
    version: TrtVersion, precision: Precision, model: ModelTraits, calibration_data: bool
) -> BuildPlan:
    if precision is Precision.FP32:
        return BuildPlan(False, False, False, Int8Source.NONE)
    if precision is Precision.FP16:
        return BuildPlan(False, True, False, Int8Source.NONE)
    if model.has_qdq:
        # Weak typing with INT8 for the Q/DQ regions and FP16 for the rest is the fastest plan
        # on 10.x; the INT8 flag is what enables the explicit-quantization kernels there.
        return BuildPlan(False, True, True, Int8Source.QDQ)
    if not calibration_data:
        raise UnsupportedBuild(
            f"INT8 from a float model on TensorRT {version} needs calibration images "
            "(--calib-images DIR) for the legacy entropy calibrator, or a Q/DQ model from "
            "`edgewatch calibrate`"
        )
    return BuildPlan(
        False,
        True,
        True,
        Int8Source.CALIBRATOR,
        notes=("legacy implicit INT8 calibration (deprecated since TensorRT 10.1, gone in 11)",),
    )


@dataclass(frozen=True)
class BatchProfile:
    """The dynamic-batch optimization profile MIN:OPT:MAX of the input tensor's first axis."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile {self} must satisfy 1 <= MIN <= OPT <= MAX")

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """``"1:4:8"`` -> profile; a single ``"8"`` means ``1:8:8``. Raises ``ValueError``."""
        parts = text.strip().split(":")
        if len(parts) not in (1, 3) or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"batch profile {text!r} is not MIN:OPT:MAX (e.g. 1:4:8) or MAX")
        values = [int(p) for p in parts]
        if len(values) == 1:
            return cls.for_max_batch(values[0])
        return cls(values[0], values[1], values[2])

    @classmethod
    def for_max_batch(cls, max_batch: int) -> BatchProfile:
        """The default profile: any batch from 1, tuned for the full batch the batcher sends."""
        return cls(1, max_batch, max_batch)


def resolve_profile(configured: tuple[int, int, int] | None, max_batch: int) -> BatchProfile:
    """The profile for a model config: explicit ``batch_profile`` or derived from ``max_batch``.

    The engine must accept every batch the batcher may send (1 up to ``max_batch``), so a
    profile that does not is an error rather than a silent clamp.
    """
    profile = BatchProfile(*configured) if configured else BatchProfile.for_max_batch(max_batch)
    if profile.min != 1:
        raise ValueError(
            f"batch profile {profile} must start at 1: the batcher dispatches partial batches"
        )
    if profile.max < max_batch:
        raise ValueError(f"batch profile {profile} has MAX below model.max_batch={max_batch}")
    return profile
