"""What config validation reports: one problem per line, never a secret.

A ``ConfigProblem`` renders as ``FILE:LINE: KEY: MESSAGE`` (``FILE:LINE:COLUMN:`` for YAML
syntax errors, where the column matters) so editors and CI logs can jump to it. Messages are
built by the loader, which never puts a password or camera URL into them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file."""

    file: str
    message: str
    line: int | None = None
    column: int | None = None
    # Dotted key path such as ``cameras[2].max_fps``; None for file-level problems.
    key: str | None = None

    def render(self) -> str:
        """The one-line form shown to operators."""
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"

    def __str__(self) -> str:
        return self.render()


class ConfigError(Exception):
    """A config file failed validation; ``problems`` holds every problem found in one pass."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(p.render() for p in self.problems))

    def lines(self) -> list[str]:
        """One rendered line per problem, in file order."""
        return [p.render() for p in self.problems]


@dataclass(frozen=True)
class ConfigWarning:
    """Something legal but risky, such as secrets in a file other users can read."""

    file: str
    message: str
    hint: str

    def render(self) -> str:
        return f"{self.file}: warning: {self.message}; {self.hint}"


class BadValue(Exception):
    """Raised by value checks with the message for the offending key (no secret in it)."""
