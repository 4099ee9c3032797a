"""The compiled tracker's cache on real file systems: a damaged cache is compiled again at
warm-up instead of failing every start (a real numba cache, cut short the way a power loss
while writing it leaves it), and code with nowhere to cache still compiles, with a warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = """
from daemon.track.jit import compiled


@compiled
def add_one(x: float) -> float:
    return x + 1.0
"""


def _python(code: str, where: Path, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(where), str(REPO)])
    if home is not None:  # numba's cache in the user's home is no way out either
        env["HOME"] = env["XDG_CACHE_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_cache_cut_short_is_compiled_again_at_warm_up(tmp_path: Path) -> None:
    (tmp_path / "warmed.py").write_text(MODULE)
    assert _python("import warmed; warmed.add_one(1.0)", tmp_path).returncode == 0
    index = list((tmp_path / "__pycache__").glob("warmed.add_one-*.nbi"))
    assert index, "numba wrote no cache"
    for path in index:
        path.write_bytes(b"")
    # The damage is real: called plainly, numba raises at every start.
    plain = _python("import warmed; warmed.add_one(1.0)", tmp_path)
    assert plain.returncode != 0
    assert "EOFError" in plain.stderr

    warmed = _python(
        "import logging, warmed\n"
        "from daemon.track.jit import warm\n"
        "logging.basicConfig()\n"
        "warm(warmed, lambda: warmed.add_one(1.0))\n"
        "print(warmed.add_one(2.0))",
        tmp_path,
    )
    assert warmed.returncode == 0, warmed.stderr
    assert warmed.stdout.strip() == "3.0"
    assert "compiling it again" in warmed.stderr
    # And the cache is whole again: the next start loads the code from it.
    again = _python(
        "import warmed; warmed.add_one(1.0); print(sum(warmed.add_one.stats.cache_hits.values()))",
        tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "1"


def test_code_with_nowhere_to_cache_is_compiled_and_says_so(read_only_dir: Path) -> None:
    (read_only_dir.parent / "source" / "warmed.py").write_text(MODULE)
    result = _python(
        "import logging, warmed\n"
        "from daemon.track.jit import warm\n"
        "logging.basicConfig()\n"
        "warm(warmed, lambda: warmed.add_one(1.0))\n"
        "print(warmed.add_one(2.0))",
        read_only_dir,
        home=read_only_dir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3.0"
    assert "cannot be cached" in result.stderr
    assert not list((read_only_dir.parent / "source").rglob("*.nb?"))
