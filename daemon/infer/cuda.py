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
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from daemon.config.model import TensorRTRuntime
from engines.cache import Platform

DEVICE_TREE_MODEL = Path("/proc/device-tree/model")

if TYPE_CHECKING:
    import pycuda.driver as cuda


class GpuUnavailable(RuntimeError):
    """No usable CUDA device, or PyCUDA is not installed; message for the operator."""


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


def shares_host_memory(device: int = 0) -> bool:
    """Whether ``device`` is an integrated GPU (Jetson) that can map pinned host memory: then
    a mapped host buffer is device memory too, and copies between the two are pure waste."""
    import pycuda.driver as cuda

    gpu = _open_device(device)
    with _cuda_usable():
        return bool(
            gpu.get_attribute(cuda.device_attribute.INTEGRATED)
            and gpu.get_attribute(cuda.device_attribute.CAN_MAP_HOST_MEMORY)
        )


def jetson_board(model_file: Path) -> str:
    """The Jetson module's name ("NVIDIA Jetson AGX Orin Developer Kit", "... Orin Nano ...")
    from the device tree; empty where there is none (a dGPU host)."""
    try:
        return model_file.read_bytes().rstrip(b"\0\n").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def detect_platform(
    trt_api: ModuleType, runtime: TensorRTRuntime = TensorRTRuntime.TENSORRT, device: int = 0
) -> Platform:
    """Runtime version and GPU identity of this machine, the platform half of an engine key.

    Device queries need no context. Retaining one here only to release it would have the
    driver create and destroy the primary context that the caller then creates again.
    """
    import pycuda.driver as cuda

    gpu = _open_device(device)
    with _cuda_usable():
        return Platform(
            trt_api.__version__,
            gpu.name(),
            gpu.compute_capability(),
            runtime,
            board=jetson_board(DEVICE_TREE_MODEL),
            multiprocessors=int(gpu.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)),
        )
