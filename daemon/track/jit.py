"""Compiled loops for the tracker: numba's ``njit``, typed for mypy.

The tracker's per-frame work is a few hundred small steps over tens of boxes; as numpy
calls each costs microseconds of dispatch, as a compiled loop a few nanoseconds. numba
compiles the plain Python loops at the first call. The machine code is cached on disk
(next to the module, or in ``NUMBA_CACHE_DIR``; the systemd unit points that at the cache
directory) so later starts load it instead of compiling again. Without any writable place
for the cache the functions are compiled at every start instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

Fn = TypeVar("Fn", bound=Callable[..., Any])


def compiled(fn: Fn) -> Fn:
    """``fn`` compiled to machine code at its first call, cached on disk where possible."""
    try:
        return cast(Fn, numba.njit(cache=True)(fn))
    except RuntimeError:  # numba found no writable directory for the cache
        return cast(Fn, numba.njit(fn))
