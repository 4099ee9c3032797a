"""The CUDA device as TensorRT sees it: identity for the engine cache, and its context.

TensorRT works through the CUDA runtime, which uses the device's *primary* context; PyCUDA
is pointed at that same context (``retain_primary_context``) rather than creating its own,
so buffers PyCUDA allocates are valid for TensorRT. A CUDA context is current per thread:
every thread that calls PyCUDA or TensorRT pushes it first and pops it after
(``context_current``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from engines.cache import Platform

if TYPE_CHECKING:
    import pycuda.driver as cuda


class GpuUnavailable(RuntimeError):
    """No usable CUDA device, or TensorRT/PyCUDA are not installed; message for the operator."""


def retain_context(device: int = 0) -> cuda.Context:
    """Initialise the driver and retain ``device``'s primary context (not made current)."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise GpuUnavailable(f"PyCUDA is not installed ({exc})") from exc
    try:
        cuda.init()
        if device >= cuda.Device.count():
            raise GpuUnavailable(f"CUDA device {device} not found ({cuda.Device.count()} present)")
        return cuda.Device(device).retain_primary_context()
    except cuda.Error as exc:
        raise GpuUnavailable(f"CUDA is not usable: {exc}") from exc


@contextmanager
def context_current(context: cuda.Context) -> Iterator[None]:
    """Make ``context`` current in the calling thread for the duration of the block."""
    import pycuda.driver as cuda

    context.push()
    try:
        yield
    finally:
        cuda.Context.pop()


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot be used here, or None when it can.

    The ``tensorrt-stubs`` package installs a bare ``tensorrt/`` folder of ``.pyi`` files, which
    Python imports as an empty namespace package: "importable" is not "installed".
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        return f"TensorRT is not installed ({exc})"
    if getattr(trt, "__file__", None) is None:
        return "TensorRT is not installed (only its type stubs are)"
    return None


def detect_platform(device: int = 0) -> Platform:
    """TensorRT version and GPU identity of this machine, the platform half of an engine key."""
    missing = tensorrt_missing()
    if missing is not None:
        raise GpuUnavailable(missing)
    import pycuda.driver as cuda
    import tensorrt as trt

    retain_context(device).detach()
    dev = cuda.Device(device)
    return Platform(trt.__version__, dev.name(), dev.compute_capability())
