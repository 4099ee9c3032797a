"""The layering rules of scripts/import_graph.py hold for the repository, and the script
finds each kind of violation in a tree planted with one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fixtures.data import REPO

SCRIPT = REPO / "scripts" / "import_graph.py"


def _graph(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, check=False
    )


def test_repository_has_no_package_cycle_and_one_command_layer() -> None:
    result = _graph(REPO)
    assert result.returncode == 0, result.stderr
    assert "daemon.commands" in result.stdout


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.relative_to(root).parents:
        if parent != Path("."):
            (root / parent / "__init__.py").touch()
    path.write_text(text)


def test_finds_a_cycle_a_command_import_and_an_exit(tmp_path: Path) -> None:
    _write(tmp_path, "daemon/capture/a.py", "def f():\n    from daemon.publish import b\n")
    _write(tmp_path, "daemon/publish/b.py", "from daemon.capture.a import f\n")
    _write(tmp_path, "daemon/config/c.py", "from daemon.cli import main\n")
    _write(tmp_path, "daemon/cli.py", "import sys\nsys.exit(0)\n")
    _write(tmp_path, "engines/e.py", "import sys\n\ndef g():\n    sys.exit(2)\n")
    _write(tmp_path, "calib/k.py", "def h():\n    raise SystemExit(1)\n")
    result = _graph(tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "VIOLATION import cycle between daemon.capture, daemon.publish" in lines
    assert any(
        line.startswith("VIOLATION daemon/config/c.py: imports the command") for line in lines
    )
    assert "VIOLATION engines/e.py:4: ends the process" in lines
    assert "VIOLATION calib/k.py:2: ends the process" in lines
    # The command layer itself may exit.
    assert not any("daemon/cli.py" in line for line in lines)
    assert len(lines) == 4
