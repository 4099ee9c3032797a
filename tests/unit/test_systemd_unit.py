"""The systemd unit lets CUDA initialise on a discrete GPU with any current NVIDIA driver:
the device groups every driver generation registers in /proc/devices are allowed, and
/proc/driver/nvidia (read by cuInit) stays visible."""

from __future__ import annotations

import re

from tests.fixtures.data import REPO

UNIT = REPO / "systemd" / "edgewatch.service"
# /proc/devices names: nvidia-frontend before driver 550; nvidia and nvidiactl from 550 on;
# nvidia-uvm (unified memory) and nvidia-caps (MIG and capabilities) on both.
NVIDIA_GROUPS = ("nvidia-frontend", "nvidia", "nvidiactl", "nvidia-uvm", "nvidia-caps")


def _values(key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", UNIT.read_text(), re.MULTILINE)


def test_every_nvidia_device_group_is_allowed() -> None:
    allowed = {v.split()[0] for v in _values("DeviceAllow")}
    assert _values("DevicePolicy") == ["closed"]
    for group in NVIDIA_GROUPS:
        assert f"char-{group}" in allowed, group


def test_proc_keeps_the_nvidia_driver_visible() -> None:
    # ProcSubset=pid would hide /proc/driver/nvidia*, which CUDA reads at initialisation.
    assert _values("ProcSubset") in ([], ["all"])
    assert _values("ProtectProc") == ["invisible"]
