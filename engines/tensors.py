"""An engine I/O tensor as TensorRT declares it: the one description the builder reports and
the backend sizes its buffers from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorrt as trt


@dataclass(frozen=True)
class TensorSpec:
    """Name, direction, shape (``-1`` for a dynamic axis) and TensorRT ``DataType`` name."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype_name: str


def dims_tuple(dims: trt.Dims | Sequence[int]) -> tuple[int, ...]:
    """A TensorRT ``Dims`` (indexable, not iterable in every binding) as a tuple of ints."""
    return tuple(int(dims[i]) for i in range(len(dims)))
