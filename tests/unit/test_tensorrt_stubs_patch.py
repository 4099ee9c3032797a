"""The tensorrt-stubs fixes: mechanical, idempotent, and they leave parseable stubs."""

from __future__ import annotations

import ast
import importlib.util
import sys
from types import ModuleType

from tests.fixtures.data import REPO

SCRIPT = REPO / "scripts" / "patch_tensorrt_stubs.py"

SAMPLE = (
    "from __future__ import annotations\r\n"
    "import tensorrt_libs as tensorrt_libs\r\n"
    "__all__ = ['Builder', 'tensorrt_libs', 'uint8']\r\n"
    "class IPlugin:\r\n"
    "    def configure(self, in: list[int], out: list[int]) -> bool:\r\n"
    "        '''returns a bool'''\r\n"
    "    def add_scale_nd(self, input: int, shift: Weights = None, scale: Weights = None, "
    "power: Weights = None, channel_axis: int) -> int: ...\r\n"
    "    flag: bool\r\n"
    "bool: DataType  # value = <DataType.BOOL: 4>\r\n"
)


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("patch_tensorrt_stubs", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_patch_fixes_syntax_imports_and_shadowed_bool() -> None:
    script = _script()
    fixed = script.patch_source(SAMPLE)
    ast.parse(fixed)
    assert "tensorrt_libs" not in fixed
    assert "in_: list[int]" in fixed
    assert "-> builtins.bool:" in fixed
    assert "flag: builtins.bool" in fixed
    assert "'''returns a bool'''" in fixed
    assert "\nbool: DataType" in fixed
    assert "\nimport builtins\n" in fixed
    assert script.patch_source(fixed) == fixed
