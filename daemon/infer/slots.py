"""One set of buffers per inference thread, for backends that run several batches at once.

GPU backends give each in-flight batch its own stream, pinned buffers and (TensorRT)
execution context: a *slot*. The output they return is a view of the slot's pinned memory,
valid until the same thread infers again (the ``Backend`` contract), so a thread keeps its
slot for good.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Generic, TypeVar

from daemon.infer.backend import BackendError

SlotT = TypeVar("SlotT")


class SlotPool(Generic[SlotT]):
    """Hands each calling thread a slot of its own, kept for its next calls.

    A thread's slot is bound on its first call and reused after, so the output view returned
    to it stays untouched until it calls again. Slots of threads that have exited are
    reclaimed. More live threads than slots is a wiring error, reported instead of blocking.
    """

    def __init__(self, slots: Sequence[SlotT]) -> None:
        if not slots:
            raise ValueError("a slot pool needs at least one slot")
        self._free = list(slots)
        self._owned: dict[threading.Thread, SlotT] = {}
        self._lock = threading.Lock()
        self.size = len(slots)

    def slot_for_current_thread(self) -> SlotT:
        thread = threading.current_thread()
        with self._lock:
            slot = self._owned.get(thread)
            if slot is not None:
                return slot
            if not self._free:
                for dead in [t for t in self._owned if not t.is_alive()]:
                    self._free.append(self._owned.pop(dead))
            if not self._free:
                raise BackendError(
                    f"infer() called from more than max_inflight={self.size} threads; "
                    "size the inference executor to max_inflight"
                )
            slot = self._free.pop()
            self._owned[thread] = slot
            return slot

    def current(self) -> SlotT | None:
        """The calling thread's slot, None if it has not been bound one (binds nothing)."""
        with self._lock:
            return self._owned.get(threading.current_thread())

    def all_slots(self) -> list[SlotT]:
        with self._lock:
            return [*self._free, *self._owned.values()]

    def release(self) -> list[SlotT]:
        """Forget every slot (the backend is closing) and return them for freeing."""
        with self._lock:
            slots = [*self._free, *self._owned.values()]
            self._free.clear()
            self._owned.clear()
            return slots
