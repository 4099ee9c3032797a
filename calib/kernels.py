"""Which kernels an INT8 accuracy figure comes from.

ONNX Runtime fuses a Q/DQ model into integer kernels whose MLAS implementation is chosen per
CPU (x86: AVX2 u8s8, AVX-VNNI, AVX512, AVX512-VNNI, AMX; ARM64: dot product, i8mm), and the
same file scores differently across them (docs/int8.md). Every INT8 score therefore names
the CPU's int8 instruction set, the onnxruntime version and whether the integer kernels or
float fake-quantization (``OnnxRuntimeBackend(fuse_qdq=False)``) ran it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnxruntime

QdqKernels = Literal["integer", "fake-quant"]
QDQ_KERNELS: tuple[QdqKernels, ...] = ("integer", "fake-quant")

# /proc/cpuinfo flags, in the order MLAS's platform set-up lets each override the previous
# one for its int8 GEMM and convolution kernels (x86), then ARM64's "Features".
_INT8_ISA = ("amx_int8", "avx512_vnni", "avx512bw", "avx_vnni", "avx2", "i8mm", "asimddp")
_FLAG_KEYS = ("flags", "Features")
CPUINFO = Path("/proc/cpuinfo")


def int8_isa(cpuinfo: str) -> str:
    """The most capable int8-relevant instruction set in ``cpuinfo`` (``/proc/cpuinfo``
    text): one of ``amx_int8, avx512_vnni, avx512bw, avx_vnni, avx2, i8mm, asimddp``, or
    ``"none"`` when none is listed."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in _FLAG_KEYS:
            flags.update(value.split())
    return next((isa for isa in _INT8_ISA if isa in flags), "none")


@dataclass(frozen=True)
class RuntimeRecord:
    """What an INT8 score depends on besides the model: this CPU's int8 instruction set and
    the onnxruntime version."""

    cpu_int8_isa: str
    onnxruntime: str

    def label(self, qdq: QdqKernels) -> str:
        """Short form for report lines, e.g. ``integer kernels, avx2, onnxruntime 1.32.0``."""
        return f"{qdq} kernels, {self.cpu_int8_isa}, onnxruntime {self.onnxruntime}"


def runtime_record(cpuinfo: Path = CPUINFO) -> RuntimeRecord:
    """The record for this machine (ISA ``"unknown"`` without a readable ``cpuinfo``,
    e.g. outside Linux)."""
    try:
        isa = int8_isa(cpuinfo.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        isa = "unknown"
    return RuntimeRecord(isa, str(onnxruntime.__version__))
