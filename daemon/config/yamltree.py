"""The YAML node tree of a config file: parsing with line marks, and reading scalars.

The loader validates the composed node tree rather than ``yaml.safe_load``'s plain dicts
because every node keeps its start mark, which is what lets a problem name its line.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from daemon.config.errors import ConfigError, ConfigProblem
from daemon.config.secrets import mask_url

NULL_TAG = "tag:yaml.org,2002:null"
_MAX_SHOWN = 60


def compose(text: str, file: str) -> Node | None:
    """Parse ``text`` into a node tree; a syntax error raises ``ConfigError`` with its line."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_problem(exc, file)]) from None
    except yaml.reader.ReaderError as exc:
        # Raised for control characters; it has a character offset but no mark.
        position = int(exc.position)
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        raise ConfigError(
            [ConfigProblem(file, f"invalid YAML: {exc.reason}", line=line, column=column)]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(file, f"invalid YAML: {exc}")]) from None


def _syntax_problem(exc: yaml.MarkedYAMLError, file: str) -> ConfigProblem:
    # Only the problem and context texts: the snippet PyYAML appends could show a password.
    message = f"invalid YAML: {exc.problem or exc.context or 'syntax error'}"
    if exc.problem and exc.context and exc.problem.startswith("but "):
        # The composer words it as "expected X" + "but found Y".
        message = f"invalid YAML: {exc.context}, {exc.problem}"
    elif exc.problem and exc.context:
        at = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        message += f" ({exc.context}{at})"
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return ConfigProblem(file, message)
    return ConfigProblem(file, message, line=mark.line + 1, column=mark.column + 1)


def line_of(node: Node) -> int:
    """1-based line where ``node`` starts."""
    return int(node.start_mark.line) + 1


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


class ScalarReader:
    """Turns scalar nodes into Python values with YAML's own (1.1, safe) typing rules."""

    def __init__(self) -> None:
        self._constructor = SafeConstructor()

    def value(self, node: ScalarNode) -> Any:
        """The node's value (str, int, float, bool, None, date...); raises ``ValueError``."""
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, TypeError) as exc:
            raise ValueError(getattr(exc, "problem", None) or str(exc)) from None

    def flatten(self, node: MappingNode) -> None:
        """Apply ``<<`` merge keys in place, keeping every node's mark."""
        try:
            self._constructor.flatten_mapping(node)
        except yaml.YAMLError as exc:
            raise ValueError(getattr(exc, "problem", None) or str(exc)) from None


def describe(node: Node, value: Any = None, *, secret: bool = False) -> str:
    """How a value reads in an error message; a secret's content is never shown."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if is_null(node):
        return "null (an empty value)"
    kind = _kind(value)
    if secret:
        return kind
    if isinstance(value, str):
        # A URL pasted under the wrong key must not show its credentials either.
        shown = mask_url(value)
        return repr(shown if len(shown) <= _MAX_SHOWN else shown[: _MAX_SHOWN - 3] + "...")
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return str(node.value) if is_number else f"{node.value} ({kind})"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"
