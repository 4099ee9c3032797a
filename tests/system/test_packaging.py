"""The built distribution holds the product packages and their data, never bench/ or tests/.

setuptools' ``build_py`` step decides which files a wheel of this pure-Python project
contains (``bdist_wheel`` packs its output plus the metadata); it runs here on a copy of the
checkout, because it writes ``edgewatch.egg-info`` next to the sources.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.fixtures.data import REPO

PRODUCT = ("daemon", "engines", "calib")


def _build_py(tmp_path: Path) -> Path:
    """The files ``build_py`` puts into the wheel, built from a copy of the checkout."""
    source, built = tmp_path / "source", tmp_path / "built"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__"),
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import setup; setup()",
            "-q",
            "build_py",
            "--build-lib",
            str(built),
        ],
        cwd=source,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return built


def _files(root: Path, pattern: str, under: tuple[str, ...]) -> set[str]:
    return {
        path.relative_to(root).as_posix()
        for top in under
        for path in (root / top).rglob(pattern)
        if "__pycache__" not in path.parts
    }


def test_the_built_distribution_holds_the_product_only(tmp_path: Path) -> None:
    built = _build_py(tmp_path)
    assert sorted(p.name for p in built.iterdir()) == sorted(PRODUCT)
    # Every product module, and the package data the daemon reads at run time.
    assert _files(built, "*.py", PRODUCT) == _files(REPO, "*.py", PRODUCT)
    schemas = _files(REPO, "*.schema.json", ("daemon",))
    assert schemas
    assert schemas | {"daemon/py.typed"} <= _files(built, "*", ("daemon",))
