"""Static Q/DQ INT8 quantization of a YOLOv8 ONNX model with ONNX Runtime's tools.

Two recipes (numbers for both in docs/int8.md, measured on coco_calib -> coco_eval):

* ``ort-cpu``: Conv plus the element-wise/shape ops between convs (SiLU's Sigmoid and Mul,
  Add, Concat, MaxPool, Resize, Split) with 7-bit weights (``reduce_range``), so ORT's x86
  kernels keep the whole backbone in integer ops: x86 CPUs without VNNI multiply u8 x s8
  pairs with a saturating 16-bit add, and full-range weights lose points there;
* ``tensorrt``: NVIDIA's documented placement, Q/DQ on Conv inputs only (not its output)
  with full 8-bit weights, leaving TensorRT free to fuse Conv + SiLU in higher precision.

Common to both, because TensorRT's explicit quantization demands it and one file serves
every backend (ORT CPU runs it through ``engines.qdq.int8_activations_to_uint8``, an
in-memory re-encoding into ORT's integer form): activations int8 *symmetric* (zero point
0), weights int8 per-channel symmetric, biases kept float (TensorRT's parser rejects an
int32 DequantizeLinear; ORT's default would write one per Conv). The Detect head's decode
(DFL softmax/conv, anchor arithmetic, the final concat of boxes in pixels with scores in
0..1) stays float: one quantization grid cannot serve pixels and probabilities.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from calib.images import CalibrationImage, iter_letterboxed, to_network_input
from calib.metadata import Int8Record, write_metadata
from daemon.monitor.brightness import BrightnessRange
from engines.qdq import non_8bit_dequantize_inputs

log = logging.getLogger(__name__)

METHODS = ("entropy", "percentile", "minmax")
DECODE = "decode"
# Float blocks: "decode" (the Detect head outside its conv branches) plus node-name prefixes.
DEFAULT_FLOAT_BLOCKS: tuple[str, ...] = (DECODE,)


class QuantizeError(RuntimeError):
    """Quantization could not run; the message is meant for the operator."""


@dataclass(frozen=True)
class Recipe:
    """Which operators get Q/DQ, whether their outputs do too (ORT's kernels fuse an op
    into an integer kernel only when its output is quantized) and whether weights use the
    7-bit range."""

    op_types: tuple[str, ...]
    quantize_outputs: bool
    reduce_range: bool


RECIPES: dict[str, Recipe] = {
    "ort-cpu": Recipe(
        ("Conv", "Mul", "Sigmoid", "Add", "Concat", "MaxPool", "Resize", "Split"),
        quantize_outputs=True,
        reduce_range=True,
    ),
    "tensorrt": Recipe(("Conv",), quantize_outputs=False, reduce_range=False),
}
# Chosen by measurement (docs/int8.md): the smaller mAP50-95 drop on coco_eval, and the one
# recipe ORT runs in integer kernels.
DEFAULT_RECIPE = "ort-cpu"


@dataclass(frozen=True)
class QuantizeOptions:
    method: str = "entropy"
    recipe: str = DEFAULT_RECIPE
    float_blocks: tuple[str, ...] = DEFAULT_FLOAT_BLOCKS
    input_size: int = 640
    batch_size: int = 8


def decode_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes of the Ultralytics Detect head (``/model.<last>/``) outside its ``cv2``/``cv3``
    conv branches: the DFL, anchor grid and box arithmetic and the output concat."""
    indices = {
        int(parts[1][len("model.") :])
        for n in model.graph.node
        if (parts := n.name.split("/"))
        and len(parts) > 2
        and parts[1].startswith("model.")
        and parts[1][len("model.") :].isdigit()
    }
    if not indices:
        raise QuantizeError(
            "cannot find the Detect head: node names are not Ultralytics-style '/model.N/...'; "
            "export the model with Ultralytics or `edgewatch export`"
        )
    head = f"/model.{max(indices)}/"
    branches = (f"{head}cv2", f"{head}cv3")
    return [
        n.name
        for n in model.graph.node
        if n.name.startswith(head) and not n.name.startswith(branches)
    ]


def float_nodes(model: onnx.ModelProto, float_blocks: Sequence[str]) -> list[str]:
    """Names of the nodes ``float_blocks`` keeps in float (``decode`` or name prefixes)."""
    names: set[str] = set()
    for block in float_blocks:
        if block == DECODE:
            names.update(decode_nodes(model))
            continue
        hits = [n.name for n in model.graph.node if n.name.startswith(block)]
        if not hits:
            raise QuantizeError(f"float block {block!r} matches no node of the model")
        names.update(hits)
    return sorted(names)


class _Reader:
    """``CalibrationDataReader`` over batches of images, letterboxed on demand.

    ``set_range`` lets ``quantize_static`` (``CalibStridedMinMax``) hand the calibrator one
    batch at a time; collecting every activation of 128 frames at once needs ~20 GB.
    """

    def __init__(
        self,
        images: Sequence[CalibrationImage],
        input_size: int,
        batch_size: int,
        input_name: str,
    ):
        self._input_name = input_name
        self._chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        self._hw = (input_size, input_size)
        self._batch_size = batch_size
        self._pending: list[Sequence[CalibrationImage]] = []
        self.brightness: list[float] = []
        self.set_range(0, len(self._chunks))

    def __len__(self) -> int:
        return len(self._chunks)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = list(self._chunks[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        while self._pending:
            chunk = self._pending.pop(0)
            for batch in iter_letterboxed(chunk, self._hw, self._batch_size, self.brightness):
                return {self._input_name: to_network_input(batch.images)}
        return None


def _library_versions() -> dict[str, str]:
    """Versions of the packages whose arithmetic the INT8 model depends on: the calibrator
    and quantizer, the histograms, the JPEG decoding and resizing of the calibration frames
    (module attributes: the distribution may be onnxruntime-gpu or another build)."""
    import cv2
    import onnxruntime

    return {
        "onnxruntime": str(onnxruntime.__version__),
        "onnx": str(onnx.__version__),
        "numpy": str(np.__version__),
        "opencv": str(cv2.__version__),
    }


def quantize(
    model_path: Path,
    images: Sequence[CalibrationImage],
    out_path: Path,
    options: QuantizeOptions,
    source_label: str,
) -> Int8Record:
    """Write the Q/DQ INT8 model for ``model_path`` calibrated on ``images`` to ``out_path``
    (with the edgewatch metadata) and return what was done."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if options.method not in METHODS:
        raise QuantizeError(f"unknown calibration method {options.method!r}; one of {METHODS}")
    if options.recipe not in RECIPES:
        raise QuantizeError(f"unknown recipe {options.recipe!r}; one of {sorted(RECIPES)}")
    recipe = RECIPES[options.recipe]
    method = {
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "minmax": CalibrationMethod.MinMax,
    }[options.method]
    with tempfile.TemporaryDirectory(prefix="edgewatch-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            # Shape inference + ORT graph optimisation first (what ORT's docs ask for);
            # symbolic shape inference would need sympy and gains nothing on this graph.
            quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
            model = onnx.load(str(prepared))
        except Exception as exc:  # onnx/ORT raise many unrelated types for a bad file
            raise QuantizeError(f"{model_path} is not a quantizable ONNX model: {exc}") from exc
        initializers = {init.name for init in model.graph.initializer}
        input_name = next(i.name for i in model.graph.input if i.name not in initializers)
        reader = _Reader(images, options.input_size, options.batch_size, input_name)
        excluded = float_nodes(model, options.float_blocks)
        log.info(
            "calibrating",
            extra={"images": len(images), "method": options.method, "float_nodes": len(excluded)},
        )
        quantized = Path(tmp) / "quantized.onnx"
        quantize_static(
            str(prepared),
            str(quantized),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=recipe.reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(recipe.op_types),
            nodes_to_exclude=excluded,
            calibrate_method=method,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "CalibStridedMinMax": 1,
                "QuantizeBias": False,
                "OpTypesToExcludeOutputQuantization": (
                    [] if recipe.quantize_outputs else list(recipe.op_types)
                ),
            },
        )
        if not reader.brightness:
            raise QuantizeError("no calibration image could be read")
        result = onnx.load(str(quantized))
        rejected = non_8bit_dequantize_inputs(result)
        if rejected:
            raise QuantizeError(
                f"the quantized model has {len(rejected)} DequantizeLinear node(s) on a "
                f"non-8-bit input, which TensorRT cannot parse (first: {rejected[0]})"
            )
        record = Int8Record(
            method=options.method,
            recipe=options.recipe,
            activations="int8 symmetric per-tensor",
            weights="int8 symmetric per-channel" + (", 7-bit range" if recipe.reduce_range else ""),
            bias="float",
            op_types=recipe.op_types,
            float_blocks=options.float_blocks,
            float_nodes=len(excluded),
            calibration_images=len(reader.brightness),
            calibration_source=source_label,
            brightness=BrightnessRange.from_values(reader.brightness),
            libraries=_library_versions(),
        )
        write_metadata(result, record)
        onnx.save(result, str(out_path))
    return record
