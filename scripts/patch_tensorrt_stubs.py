"""Make the installed ``tensorrt-stubs`` usable by mypy (run once after installing them).

``tensorrt-stubs`` 10.13.0.35.1 is the newest stub package for the TensorRT 10 Python API, but
as published mypy cannot use it:

* its ``py.typed`` marker sits in a ``tensorrt_stubs/`` folder instead of beside the stubs, so
  mypy treats ``tensorrt`` as an untyped package and silently ignores every stub;
* ``tensorrt_bindings/tensorrt.pyi`` does not parse: plugin methods name a parameter ``in``
  (a keyword) and ``add_scale_nd`` puts the required ``channel_axis`` after defaulted
  parameters (legal in pybind11, not in Python);
* both ``__init__.pyi`` files import ``tensorrt_libs``, a runtime-only package with no stubs,
  and omit ``__version__``, which the builder needs to pick the TensorRT 10 or 11 path;
* the module-level alias ``bool: DataType`` (``trt.bool``) shadows the builtin inside
  ``tensorrt.pyi``, so every ``-> bool`` there means "returns a DataType" and mypy then calls
  ``if not parser.parse(...)`` branches unreachable; annotations are pointed at
  ``builtins.bool``.

The fixes are mechanical and are applied in place, idempotently, to exactly the pinned stub
version (install with ``pip install --no-deps tensorrt-stubs==10.13.0.35.1``: its dependency on
the real ``tensorrt`` wheel cannot be satisfied on machines without TensorRT). Each file is
checked against the sha256 of its published (or already patched) form, so a different stub
version fails loudly instead of being half-patched. Exit status 0 when the stubs are usable,
2 when they are missing or not the expected version.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

STUB_DISTRIBUTION = "tensorrt-stubs"
STUB_VERSION = "10.13.0.35.1"

# A parameter named ``in`` in a def line; renamed ``in_`` (only keyword callers would notice).
_IN_PARAM = re.compile(r"(?m)^(\s*def [^\n]*?[(,] ?)in:")
_SCALE_ND_BAD = "power: Weights = None, channel_axis: int)"
# Keyword-only keeps every default and the required channel_axis, which is how it is called.
_SCALE_ND_FIXED = "power: Weights = None, *, channel_axis: int)"
# The published files have CRLF line ends; patterns accept both.
_LIBS_IMPORT = re.compile(r"(?m)^import tensorrt_libs as tensorrt_libs\r?\n")
_VERSION_DECL = "__version__: str\n"
_BOOL_ALIAS = "bool: DataType"
_BUILTINS_IMPORT = "import builtins\n"
# A def line or an annotated attribute, where a bare ``bool`` is meant as the builtin type.
_ANNOTATED_LINE = re.compile(r"^\s*(def |[A-Za-z_]\w*: )")
_BARE_BOOL = re.compile(r"(?<![.\w'\"])bool\b")


@dataclass(frozen=True)
class StubFile:
    """One stub file: its path inside site-packages and the sha256 of its published form."""

    relpath: str
    original_sha256: str


STUB_FILES = (
    StubFile(
        "tensorrt/__init__.pyi",
        "c8bca8be1e369901c7608337e4c4614a896a68fe39ecc512f87cc803153567c6",
    ),
    StubFile(
        "tensorrt_bindings/__init__.pyi",
        "277270f375579f2904513880661740d95fdea31d233f5edf876079d2d782fb1a",
    ),
    StubFile(
        "tensorrt_bindings/tensorrt.pyi",
        "b4cabd654492d265b7d9f96f16494102575c4d17cde7d94e99aae1fcaacf7d92",
    ),
)
TYPED_PACKAGES = ("tensorrt", "tensorrt_bindings")


class StubPatchError(Exception):
    """The installed stubs are missing or are not the version these fixes were written for."""


def patch_source(text: str) -> str:
    """Return ``text`` with the mechanical fixes applied; applying it twice changes nothing."""
    text = _IN_PARAM.sub(r"\1in_:", text)
    text = text.replace(_SCALE_ND_BAD, _SCALE_ND_FIXED)
    text = _LIBS_IMPORT.sub("", text)
    text = text.replace("'tensorrt_libs', ", "")
    is_package_init = "from tensorrt_bindings.tensorrt import" in text
    if is_package_init and _VERSION_DECL not in text:
        # The real package modules expose their version string; the stubs forgot it.
        text = text.rstrip("\n") + "\n" + _VERSION_DECL
    if _BOOL_ALIAS in text:
        text = _shadowed_bool_fixed(text)
    return text


def _shadowed_bool_fixed(text: str) -> str:
    """Point annotations at ``builtins.bool``: the module-level alias ``bool: DataType``
    shadows the builtin, which turns every ``-> bool`` into an always-true DataType."""
    if _BUILTINS_IMPORT not in text:
        # Appended: a stub is never executed, so its import order does not matter.
        text = text.rstrip("\r\n") + "\n" + _BUILTINS_IMPORT
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if _ANNOTATED_LINE.match(line) and not line.startswith(_BOOL_ALIAS):
            lines[i] = _BARE_BOOL.sub("builtins.bool", line)
    return "\n".join(lines)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def site_root() -> Path:
    """The folder holding the installed stub packages (where ``tensorrt/`` lies)."""
    try:
        dist = importlib.metadata.distribution(STUB_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise StubPatchError(
            f"{STUB_DISTRIBUTION} is not installed; run: "
            f"pip install --no-deps {STUB_DISTRIBUTION}=={STUB_VERSION}"
        ) from exc
    if dist.version != STUB_VERSION:
        raise StubPatchError(
            f"{STUB_DISTRIBUTION} {dist.version} is installed, these fixes are for {STUB_VERSION}"
        )
    return Path(str(dist.locate_file("")))


def patch_file(path: Path, expected: StubFile) -> bool:
    """Patch one file in place; returns whether it changed. Raises on unknown content."""
    data = path.read_bytes()
    digest = _sha256(data)
    patched = patch_source(data.decode("utf-8"))
    if digest == expected.original_sha256:
        ast.parse(patched, filename=str(path))
        path.write_text(patched, encoding="utf-8")
        return True
    if patched.encode("utf-8") == data:
        # Already patched: the fixes are a fixed point, and it must still parse.
        ast.parse(patched, filename=str(path))
        return False
    raise StubPatchError(f"{path}: unexpected content (sha256 {digest}); reinstall the stubs")


def patch_installed(root: Path) -> list[str]:
    """Apply every fix under ``root``; returns the files and markers that were changed."""
    changed: list[str] = []
    for stub in STUB_FILES:
        path = root / stub.relpath
        if not path.is_file():
            raise StubPatchError(f"{path} is missing; reinstall {STUB_DISTRIBUTION}")
        if patch_file(path, stub):
            changed.append(stub.relpath)
    for package in TYPED_PACKAGES:
        marker = root / package / "py.typed"
        if not marker.exists():
            marker.write_text("", encoding="utf-8")
            changed.append(f"{package}/py.typed")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.parse_args(argv)
    try:
        root = site_root()
        changed = patch_installed(root)
    except StubPatchError as exc:
        print(f"patch_tensorrt_stubs: {exc}", file=sys.stderr)
        return 2
    state = ", ".join(changed) if changed else "already patched"
    print(f"patch_tensorrt_stubs: {STUB_DISTRIBUTION} {STUB_VERSION} in {root}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
