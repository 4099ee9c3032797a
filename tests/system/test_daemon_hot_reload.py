"""Hot reload through the whole daemon.

One daemon, real RTSP cameras: a SIGHUP (with the file's mtime left unchanged, so only the
signal can trigger it) adds, removes and changes a camera; an edit without a signal is picked
up by the file watch; invalid edits (bad keys and types, or a class the model lacks) are
rejected with their errors logged and the running config stays. Throughout, the camera that
never changed keeps its reader process (pid from ``/healthz``), publishes no new state and
its frame numbers never restart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.observe import NODE, ObservedDaemon, cheap_cameras, payloads
from tests.harness.daemon import DaemonProcess, write_config
from tests.harness.rtsp import RtspServer

pytestmark = [pytest.mark.rtsp, pytest.mark.mqtt]

PREFIX = "reload"
# The Service polls the config file's mtime every 2 s; then a new reader needs its first frame.
FILE_WATCH_DEADLINE_S = 20.0


def _readers(daemon: DaemonProcess) -> dict[str, int | None]:
    readers: dict[str, int | None] = daemon.healthz()["readers"]
    return readers


def _reloads(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [r for r in daemon.log_records() if r.get("msg") == "config reloaded"]


def _rejections(daemon: DaemonProcess) -> list[str]:
    return [
        str(r["problem"])
        for r in daemon.log_records()
        if r.get("msg", "").startswith("config rejected")
    ]


def _rewrite(config: Path, document: dict[str, Any], keep_mtime: bool) -> None:
    old = config.stat()
    write_config(config, document)
    if keep_mtime:
        os.utime(config, ns=(old.st_atime_ns, old.st_mtime_ns))


def test_hot_reload_adds_removes_changes_and_rejects(
    *,
    rtsp_server: RtspServer,
    videos: list[Path],
    observed_daemon: ObservedDaemon,
    daemon_document: Callable[..., dict[str, Any]],
) -> None:
    paths = cheap_cameras(rtsp_server, videos, 4)
    url = {name: rtsp_server.url(p) for name, p in zip(("a", "b", "c", "d"), paths, strict=True)}
    first = {"keep": url["a"], "change": url["b"], "remove": url["c"]}
    daemon, sub = observed_daemon(first, PREFIX)
    config = daemon.config

    def document(cameras: dict[str, Any]) -> dict[str, Any]:
        return daemon_document(cameras, PREFIX, metrics_port=daemon.metrics_port)

    daemon.wait_streaming(["keep", "change", "remove"])
    time.sleep(2.0)
    before = _readers(daemon)
    keep_states = len(payloads(sub, "state", "keep"))
    keep_seq = max(p["seq"] for p in payloads(sub, "detections", "keep"))

    # 1. SIGHUP: add, remove and change one camera each.
    _rewrite(
        config,
        document({"keep": url["a"], "change": {"url": url["b"], "max_fps": 5}, "added": url["d"]}),
        keep_mtime=True,
    )
    daemon.reload()
    daemon.wait_until(lambda: len(_reloads(daemon)) == 1, 10, "SIGHUP reload")
    reload = _reloads(daemon)[0]
    assert (reload["added"], reload["removed"], reload["changed"]) == (1, 1, 1)
    daemon.wait_streaming(["keep", "change", "added"], timeout=30)
    after = _readers(daemon)
    assert set(after) == {"keep", "change", "added"}
    assert after["keep"] == before["keep"]
    assert after["change"] != before["change"]

    def retained_state_cleared() -> bool:
        states = sub.messages(f"{PREFIX}/{NODE}/remove/state")
        return bool(states) and states[-1].payload == b""

    sub.wait_for(lambda _: retained_state_cleared(), timeout=10)

    # 2. An edit without a signal: the file watch picks it up.
    _rewrite(
        config,
        document(
            {
                "keep": url["a"],
                "change": {"url": url["b"], "max_fps": 5},
                "added": url["d"],
                "late": url["c"],
            }
        ),
        keep_mtime=False,
    )
    edited = time.monotonic()
    daemon.wait_until(lambda: len(_reloads(daemon)) == 2, 10, "file-change reload")
    daemon.wait_streaming(["late"], timeout=FILE_WATCH_DEADLINE_S)
    print(f"file edit -> new camera streaming in {time.monotonic() - edited:.1f} s")
    running = _readers(daemon)
    assert running["keep"] == before["keep"]
    assert running["added"] == after["added"]

    # 3. An invalid edit is rejected; everything keeps running on the old config.
    broken = document({"keep": url["a"], "bad": {"url": url["b"], "max_fsp": 5}})
    broken["model"]["max_batch"] = "four"
    _rewrite(config, broken, keep_mtime=False)
    daemon.wait_until(lambda: bool(_rejections(daemon)), 10, "invalid config rejected")
    problems = _rejections(daemon)
    assert any("max_fsp" in p for p in problems), problems
    assert any("max_batch" in p for p in problems), problems
    # 4. Valid YAML naming a class the model lacks: only the loaded model can reject it.
    typo = document({"keep": url["a"], "typo": {"url": url["b"], "classes": ["persn"]}})
    _rewrite(config, typo, keep_mtime=False)
    daemon.wait_until(
        lambda: any("'persn'" in p for p in _rejections(daemon)), 10, "unknown class rejected"
    )
    seen = len(payloads(sub, "detections", "keep"))
    time.sleep(3.0)
    assert len(payloads(sub, "detections", "keep")) > seen  # still streaming
    assert _readers(daemon) == running
    assert set(daemon.healthz()["cameras"].values()) == {"streaming"}
    assert len(_reloads(daemon)) == 2

    # The unchanged camera was never touched: no state change, frame numbers never restarted.
    assert len(payloads(sub, "state", "keep")) == keep_states
    seqs = [p["seq"] for p in payloads(sub, "detections", "keep")]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert seqs[-1] > keep_seq
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log_text()
