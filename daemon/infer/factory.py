"""Pick and load the configured inference backend.

ONNX Runtime is always installed. The GPU backends live in their own modules, imported only
when configured, each exposing ``load(model: ModelConfig) -> Backend``; their heavy
dependencies (tensorrt, pycuda, torch) are imported by those modules, never here.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from types import ModuleType

from daemon.config.model import BackendKind, ModelConfig
from daemon.infer.backend import Backend, BackendError
from daemon.infer.onnxruntime_backend import OnnxRuntimeBackend

log = logging.getLogger(__name__)

_MODULES = {
    BackendKind.TENSORRT: ("daemon.infer.tensorrt_backend", "tensorrt"),
    BackendKind.TORCH: ("daemon.infer.torch_backend", "torch"),
}


def load_backend(model: ModelConfig) -> Backend:
    """Load ``model`` with the backend it names; ``BackendError`` says why one cannot load."""
    kind = BackendKind(model.backend)
    if kind is BackendKind.ONNXRUNTIME:
        return OnnxRuntimeBackend.from_config(model)
    try:
        module = _import_backend_module(kind)
        backend = module.load(model)
    except BackendError as exc:
        return _fall_back(model, exc)
    if not isinstance(backend, Backend):
        raise BackendError(f"{module.__name__}.load() did not return a Backend")
    return backend


def _import_backend_module(kind: BackendKind) -> ModuleType:
    module_name, extra = _MODULES[kind]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise BackendError(
                f"backend {kind.value!r} is not part of this edgewatch installation"
            ) from exc
        raise BackendError(
            f"backend {kind.value!r} needs the Python package {exc.name!r}, which is not "
            f"installed (pip install 'edgewatch[{extra}]'; on Jetson it comes with JetPack)"
        ) from exc


def fallback_model(model: ModelConfig) -> ModelConfig | None:
    """The ONNX Runtime config to fall back to when a TensorRT load fails, or None.

    Only ``backend: tensorrt`` with ``tensorrt.fallback_to_onnxruntime: true`` falls back: a
    GPU box silently running on the CPU at a fraction of the frame rate is worse than a
    daemon that refuses to start, unless the operator chose it.
    """
    if BackendKind(model.backend) is not BackendKind.TENSORRT:
        return None
    if not model.tensorrt.fallback_to_onnxruntime:
        return None
    return dataclasses.replace(model, backend=BackendKind.ONNXRUNTIME)


def _fall_back(model: ModelConfig, error: BackendError) -> Backend:
    fallback = fallback_model(model)
    if fallback is None:
        if BackendKind(model.backend) is BackendKind.TENSORRT:
            raise BackendError(
                f"{error} (model.tensorrt.fallback_to_onnxruntime: true would run the model on "
                "ONNX Runtime instead)"
            ) from error
        raise error
    log.error(
        "TensorRT backend failed to load; FALLING BACK to ONNX Runtime as configured "
        "(model.tensorrt.fallback_to_onnxruntime), expect a much lower frame rate",
        extra={"reason": str(error), "providers": list(fallback.providers)},
    )
    return OnnxRuntimeBackend.from_config(fallback)
