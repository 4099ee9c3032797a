"""docs/ARCHITECTURE.md names every module of the product, and nothing that is not there."""

from __future__ import annotations

import re

from tests.fixtures.data import REPO

DOC = REPO / "docs" / "ARCHITECTURE.md"
PRODUCT = ("daemon", "engines", "calib", "bench")


def _modules() -> set[str]:
    return {
        str(path.relative_to(REPO))
        for top in PRODUCT
        for path in (REPO / top).rglob("*.py")
        if path.name not in {"__init__.py", "__main__.py"}
    }


def _named_in_doc() -> set[str]:
    return set(re.findall(r"`((?:daemon|engines|calib|bench)/[\w/]+\.py)`", DOC.read_text()))


def test_every_module_has_its_line() -> None:
    missing = sorted(_modules() - _named_in_doc())
    assert not missing, f"docs/ARCHITECTURE.md does not describe: {missing}"


def test_every_module_named_exists() -> None:
    stale = sorted(_named_in_doc() - _modules())
    assert not stale, f"docs/ARCHITECTURE.md names modules that do not exist: {stale}"
