"""The package import graph of edgewatch, and the layering rules it must keep.

    python scripts/import_graph.py [ROOT]

prints one line per package with the packages it imports (every ``import`` in a module counts,
also those inside functions), in an order where each package comes after everything it
imports, then any violation, and exits 1 when there is one. Rules:

- no cycle between the packages (``daemon.<sub>``, ``daemon``'s top modules, ``engines``,
  ``calib``, ``bench``);
- only the command layer (``daemon/cli.py``, ``daemon/__main__.py``, ``daemon/commands/``)
  imports ``daemon.cli`` or ``daemon.commands``;
- nothing in ``daemon/``, ``engines/`` or ``calib/`` outside the command layer calls
  ``sys.exit`` or raises ``SystemExit``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGES = ("daemon", "engines", "calib", "bench")
COMMAND_LAYER = ("daemon.cli", "daemon.__main__", "daemon.commands")
# Where only the command layer may end the process.
PRODUCT = ("daemon", "engines", "calib")


@dataclass
class Graph:
    """Package-level edges and the rule violations found while reading the modules."""

    edges: dict[str, set[str]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """``daemon.capture.ring`` -> ``daemon.capture``; ``daemon.app`` -> ``daemon.app``;
    ``engines.cache`` -> ``engines``."""
    parts = module.split(".")
    if parts[0] != "daemon" or len(parts) == 1:
        return parts[0]
    return f"daemon.{parts[1]}"


def in_layer(module: str, layer: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in layer)


def imported_modules(tree: ast.AST, module: str) -> Iterator[str]:
    """Absolute names of everything ``tree`` imports (relative imports resolved)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: -node.level]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # ``from daemon import cli`` imports the module daemon.cli.
            yield from (f"{base}.{alias.name}" for alias in node.names)


def exits(tree: ast.AST) -> Iterator[int]:
    """Line numbers of ``sys.exit(...)`` calls and ``raise SystemExit``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func
            if (
                target.attr == "exit"
                and isinstance(target.value, ast.Name)
                and target.value.id == "sys"
            ):
                yield node.lineno
        elif isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id == "SystemExit":
                yield node.lineno


def read_graph(root: Path) -> Graph:
    graph = Graph()
    for top in PACKAGES:
        for path in sorted((root / top).rglob("*.py")):
            module = module_name(root, path)
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            source = package_of(module)
            graph.edges.setdefault(source, set())
            commands = in_layer(module, COMMAND_LAYER)
            # A bare top package is the ``from X import y`` base; its ``X.y`` entry counts.
            names = [
                name
                for name in imported_modules(tree, module)
                if name.split(".")[0] in PACKAGES and name not in PACKAGES
            ]
            upward = next((n for n in names if in_layer(n, COMMAND_LAYER)), None)
            if upward is not None and not commands:
                graph.violations.append(
                    f"{path.relative_to(root)}: imports the command layer ({upward})"
                )
            for name in names:
                if (target := package_of(name)) != source:
                    graph.edges[source].add(target)
            if in_layer(module, PRODUCT) and not commands:
                for line in exits(tree):
                    graph.violations.append(f"{path.relative_to(root)}:{line}: ends the process")
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every group of packages that import each other, directly or around a loop."""
    reach = {node: _reachable(edges, node) for node in edges}
    groups = {frozenset(n for n in reach[node] if node in reach.get(n, ())) for node in edges}
    return sorted(sorted(group) for group in groups if len(group) > 1)


def _reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = {start}
    todo = [start]
    while todo:
        for target in edges.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    graph = read_graph(root)
    for group in cycles(graph.edges):
        graph.violations.append(f"import cycle between {', '.join(group)}")
    try:
        order = list(TopologicalSorter(graph.edges).static_order())
    except CycleError:
        order = sorted(graph.edges)
    for package in order:
        targets = ", ".join(sorted(graph.edges.get(package, ()))) or "-"
        print(f"{package:22} -> {targets}")
    for violation in graph.violations:
        print(f"VIOLATION {violation}", file=sys.stderr)
    return 1 if graph.violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
