"""Static Q/DQ INT8 quantization of a YOLOv8 ONNX model with ONNX Runtime's tools.

The choices below were measured on coco_calib -> coco_eval (numbers in docs/int8.md):

* activations int8 *symmetric* (zero point 0) and weights int8 per-channel symmetric: the
  only form TensorRT's explicit quantization accepts, so one file serves every backend
  (ORT CPU runs it through ``daemon.infer.qdq.int8_activations_to_uint8``, an exact re-encoding);
* 7-bit weight range (``reduce_range``): x86 CPUs without VNNI multiply u8 x s8 pairs with
  a saturating 16-bit add; full-range weights cost 4-5 mAP points there;
* Conv plus the element-wise/shape ops between convs (SiLU's Sigmoid and Mul, Add, Concat,
  MaxPool, Resize, Split) are quantized so ORT keeps the whole backbone in integer kernels;
* the Detect head's decode (DFL softmax/conv, anchor arithmetic, the final concat of boxes
  in pixels with scores in 0..1) stays float: quantizing it drops mAP to 0.
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

log = logging.getLogger(__name__)

METHODS = ("entropy", "percentile", "minmax")
DEFAULT_OP_TYPES = ("Conv", "Mul", "Sigmoid", "Add", "Concat", "MaxPool", "Resize", "Split")
DECODE = "decode"
# Float blocks: "decode" (the Detect head outside its conv branches) plus node-name prefixes.
DEFAULT_FLOAT_BLOCKS: tuple[str, ...] = (DECODE,)


class QuantizeError(RuntimeError):
    """Quantization could not run; the message is meant for the operator."""


@dataclass(frozen=True)
class QuantizeOptions:
    method: str = "entropy"
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    float_blocks: tuple[str, ...] = DEFAULT_FLOAT_BLOCKS
    reduce_range: bool = True
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
            reduce_range=options.reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(options.op_types),
            nodes_to_exclude=excluded,
            calibrate_method=method,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "CalibStridedMinMax": 1,
            },
        )
        if not reader.brightness:
            raise QuantizeError("no calibration image could be read")
        record = Int8Record(
            method=options.method,
            activations="int8 symmetric per-tensor",
            weights="int8 symmetric per-channel"
            + (", 7-bit range" if options.reduce_range else ""),
            op_types=options.op_types,
            float_blocks=options.float_blocks,
            float_nodes=len(excluded),
            calibration_images=len(reader.brightness),
            calibration_source=source_label,
            brightness=BrightnessRange.from_values(reader.brightness),
        )
        result = onnx.load(str(quantized))
        write_metadata(result, record)
        onnx.save(result, str(out_path))
    return record
