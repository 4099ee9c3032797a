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
    """Initialise the driver and retain ``device``'s primary context (not made current).

    The caller owns one reference and must ``detach()`` it. Raises ``GpuUnavailable``.
    """
    gpu = _open_device(device)
    with _cuda_usable():
        return gpu.retain_primary_context()


def _open_device(device: int) -> cuda.Device:
    """Initialise the driver and find ``device``; creates no context."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise GpuUnavailable(f"PyCUDA is not installed ({exc})") from exc
    with _cuda_usable():
        cuda.init()
        count = cuda.Device.count()
        if device >= count:
            raise GpuUnavailable(f"CUDA device {device} not found ({count} present)")
        return cuda.Device(device)


@contextmanager
def _cuda_usable() -> Iterator[None]:
    """Report PyCUDA's driver errors as ``GpuUnavailable``, which callers turn into their own
    operator-facing errors, instead of letting ``pycuda.driver.Error`` escape."""
    import pycuda.driver as cuda

    try:
        yield
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
    """TensorRT version and GPU identity of this machine, the platform half of an engine key.

    Device queries need no context. Retaining one here only to release it would have the
    driver create and destroy the primary context that the caller then creates again.
    """
    missing = tensorrt_missing()
    if missing is not None:
        raise GpuUnavailable(missing)
    import tensorrt as trt

    gpu = _open_device(device)
    with _cuda_usable():
        return Platform(trt.__version__, gpu.name(), gpu.compute_capability())
