"""Which Python module speaks for a TensorRT runtime.

TensorRT (``tensorrt``) and TensorRT-RTX (``tensorrt_rtx``) share one API family: the ONNX
parser, builder, optimization profiles, tensor-name I/O and ``execute_async_v3``. The builder
and the backend take the module this returns as a parameter, so the same edgewatch code runs
against either, and the tests run it against TensorRT-RTX's real parser and builder on
machines where TensorRT itself cannot be installed.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from daemon.config.model import TensorRTRuntime

MODULE_NAMES: dict[TensorRTRuntime, str] = {
    TensorRTRuntime.TENSORRT: "tensorrt",
    TensorRTRuntime.TENSORRT_RTX: "tensorrt_rtx",
}
INSTALL_HINTS: dict[TensorRTRuntime, str] = {
    TensorRTRuntime.TENSORRT: "JetPack on a Jetson, NVIDIA's TensorRT packages on x86",
    TensorRTRuntime.TENSORRT_RTX: "pip install 'edgewatch[tensorrt-rtx]'",
}


class RuntimeMissing(RuntimeError):
    """The runtime's Python module is not installed; the message says how to get it."""


def runtime_missing(runtime: TensorRTRuntime) -> str | None:
    """Why ``runtime`` cannot be imported here, or None when it can.

    The ``tensorrt-stubs`` package installs a bare ``tensorrt/`` folder of ``.pyi`` files, which
    Python imports as an empty namespace package: "importable" is not "installed".
    """
    name = MODULE_NAMES[runtime]
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        return f"{runtime.value} is not installed ({exc}); {INSTALL_HINTS[runtime]}"
    if getattr(module, "__file__", None) is None:
        return f"{runtime.value} is not installed (only its type stubs are)"
    return None


def load_runtime(runtime: TensorRTRuntime) -> ModuleType:
    """The imported module of ``runtime``; ``RuntimeMissing`` when it is not installed."""
    missing = runtime_missing(runtime)
    if missing is not None:
        raise RuntimeMissing(missing)
    return importlib.import_module(MODULE_NAMES[runtime])
