"""Compiled loops for the tracker: numba's ``njit``, typed for mypy.

The tracker's per-frame work is a few hundred small steps over tens of boxes; as numpy
calls each costs microseconds of dispatch, as a compiled loop a few nanoseconds. numba
compiles the plain Python loops at the first call. The machine code is cached on disk
(next to the module, or in ``NUMBA_CACHE_DIR``; the systemd unit points that at the cache
directory) so later starts load it instead of compiling again. Without any writable place
for the cache the functions are compiled at every start instead.

Arithmetic follows numpy's rules (``error_model="numpy"``): a division by zero gives inf or
NaN, as the numpy code it replaces did, instead of raising. numba's cache does not notice
a change of these options: clear it (``*.nbi`` and ``*.nbc`` files) after changing them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar, cast

import numba
from numba.core.caching import NullCache
from numba.core.dispatcher import Dispatcher
from numba.core.errors import NumbaError

log = logging.getLogger(__name__)

Fn = TypeVar("Fn", bound=Callable[..., Any])


def compiled(fn: Fn) -> Fn:
    """``fn`` compiled to machine code at its first call, cached on disk where possible."""
    try:
        return cast(Fn, numba.njit(cache=True, error_model="numpy")(fn))
    except RuntimeError:  # numba found no writable directory for the cache
        return cast(Fn, numba.njit(error_model="numpy")(fn))


def warm(module: ModuleType, run: Callable[[], object]) -> None:
    """Call ``run``, which calls ``module``'s compiled functions, so that their code is
    compiled or loaded from the cache now.

    A cache file that cannot be read (one cut short by a power loss while it was written)
    makes numba raise at every start; then the module's cache is forgotten and ``run``
    called once more, which compiles afresh and writes the cache anew. Code that does not
    compile is an error of its own and raised at once."""
    # numba has no public call to empty a function's cache or to ask whether it has one:
    # its dispatchers' ``_cache`` serves both (tests/unit/test_track_jit.py holds it to it).
    dispatchers = [v for v in vars(module).values() if isinstance(v, Dispatcher)]
    try:
        run()
    except NumbaError:
        raise
    except Exception:  # a damaged cache file: EOFError, UnpicklingError, ... from pickle
        log.warning(
            "compiled code could not be loaded from its cache; compiling it again",
            extra={"compiled_module": module.__name__},
            exc_info=True,
        )
        for dispatcher in dispatchers:
            cast(Any, dispatcher)._cache.flush()  # an empty index: nothing is read from it
        run()
    if any(isinstance(cast(Any, d)._cache, NullCache) for d in dispatchers):
        log.warning(
            "compiled code cannot be cached (no writable directory): it is compiled at every "
            "start; point NUMBA_CACHE_DIR at a writable directory",
            extra={"compiled_module": module.__name__},
        )
