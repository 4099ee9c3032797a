"""A pipeline the daemon builds for a Jetson, run by a probe script under Debian's GStreamer.

NVIDIA's decoder and converter exist only on a Jetson; each is swapped for a software element
of this machine that does the same job, and every other element is the real one.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

from tests.harness.rtsp import SYSTEM_PYTHON


def run_probe(script: str, launch: str, stand_ins: Mapping[str, str], timeout_s: float) -> str:
    """Run ``script`` under Debian's Python with ``launch`` on stdin, each element named in
    ``stand_ins`` (which must occur exactly once) replaced by its stand-in; returns stdout."""
    for element, stand_in in stand_ins.items():
        assert launch.count(f" {element} ") == 1, launch
        launch = launch.replace(f" {element} ", f" {stand_in} ")
    result = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", script],
        input=launch,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=True,
    )
    return result.stdout
