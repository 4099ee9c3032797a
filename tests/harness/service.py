"""The context-manager protocol that every harness service (broker, RTSP servers, daemon) shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # typing.Self is 3.11+, and the project still installs on 3.10: annotations only.
    from typing import Self


class Service(ABC):
    """Something a test starts and must release: ``with S(...) as s`` starts it and calls
    ``close`` on the way out, exception or not; ``s = S(...).start()`` works as well.
    """

    @abstractmethod
    def start(self) -> Self:
        """Start it and return it, ready to use."""

    @abstractmethod
    def stop(self) -> object:
        """Stop it, leaving no process behind."""

    def close(self) -> None:
        """Release everything it holds; the end of a ``with`` block. By default ``stop``."""
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
