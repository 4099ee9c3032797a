"""Camera outages through the whole daemon.

Four real RTSP cameras, the real model and broker. Killing one camera's feed turns it
``reconnecting`` within 5 s while the other three keep (or, being inference-bound, raise)
their processed frame rate; it is ``streaming`` again within 5 s of the feed returning
(90% of recoveries; see the comment at the assertion).
Then ``EDGEWATCH_OUTAGE_CYCLES`` (default 20) more outage cycles, run on three cameras at a
time to keep CI short, leave the daemon with the threads, file descriptors, child processes
and memory it had after warm-up.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path

import pytest

from tests.fixtures.observe import ObservedDaemon, cheap_cameras, payloads, rates_over
from tests.harness.daemon import DaemonProcess
from tests.harness.rtsp import RtspServer

pytestmark = [pytest.mark.rtsp, pytest.mark.mqtt]

PREFIX = "outage"
CYCLES = int(os.environ.get("EDGEWATCH_OUTAGE_CYCLES", "20"))
# Long enough that a batch boundary or a neighbour's CPU burst moves the rate by a few %.
FPS_WINDOW_S = float(os.environ.get("EDGEWATCH_FPS_WINDOW_S", "10"))
STATE_DEADLINE_S = 5.0
# Resource tolerances after the cycles (see docs/reliability.md): RSS may move by allocator
# noise only; a thread, FD or process per cycle would be far above these.
RSS_TOLERANCE = 0.05
RSS_SLACK_MB = 4.0


def _wait_states(
    daemon: DaemonProcess, cameras: list[str], state: str, timeout: float
) -> list[float]:
    """Seconds until each of ``cameras`` first reported ``state`` (polled every 50 ms)."""
    started = time.monotonic()
    reached: dict[str, float] = {}

    def all_reached() -> bool:
        states: dict[str, str] = daemon.healthz().get("cameras", {})
        for cid in cameras:
            if cid not in reached and states.get(cid) == state:
                reached[cid] = time.monotonic() - started
        return len(reached) == len(cameras)

    daemon.wait_until(all_reached, timeout, f"{cameras} {state}", poll_s=0.05)
    return [reached[c] for c in cameras]


def test_camera_outage_through_the_daemon(
    *, restore_sources: RtspServer, videos: list[Path], observed_daemon: ObservedDaemon
) -> None:
    rtsp = restore_sources
    cameras = cheap_cameras(rtsp, videos, 4)
    daemon, sub = observed_daemon({c: rtsp.url(c) for c in cameras}, PREFIX)
    daemon.wait_streaming(cameras)
    time.sleep(3.0)  # past the first batches, which pay one-time allocation costs

    dead, others = cameras[0], cameras[1:]
    before = rates_over(sub, cameras, FPS_WINDOW_S)
    rtsp.stop_source(dead)
    (to_reconnecting,) = _wait_states(daemon, [dead], "reconnecting", 30)
    during = rates_over(sub, cameras, FPS_WINDOW_S)
    if sum(during[c] for c in others) < 0.9 * sum(before[c] for c in others):
        # One window can coincide with a burst of unrelated CPU load on a 2-core box; a real
        # regression (an outage slowing the other cameras) persists, so look once more.
        during = rates_over(sub, cameras, FPS_WINDOW_S)
    rtsp.start_source(dead)
    (to_streaming,) = _wait_states(daemon, [dead], "streaming", 30)
    print(
        f"outage: reconnecting after {to_reconnecting:.2f} s, streaming again after "
        f"{to_streaming:.2f} s; others' fps before {sum(before[c] for c in others):.2f}, "
        f"during {sum(during[c] for c in others):.2f}; per camera before {before} during {during}"
    )
    assert to_reconnecting <= STATE_DEADLINE_S
    # Inference is shared: with one camera fewer the others get at least their old share.
    assert sum(during[c] for c in others) >= 0.9 * sum(before[c] for c in others)
    assert during[dead] < 0.25 * before[dead]
    reasons = [p["reason"] for p in payloads(sub, "state", dead) if p["state"] == "reconnecting"]
    assert reasons
    assert all(r for r in reasons)

    cycling = cameras[:3]
    rounds = math.ceil(CYCLES / len(cycling))
    downs: list[float] = []
    ups = [to_streaming]

    def outage_round() -> None:
        for cid in cycling:
            rtsp.stop_source(cid)
        downs.extend(_wait_states(daemon, cycling, "reconnecting", 30))
        for cid in cycling:
            rtsp.start_source(cid)
        ups.extend(_wait_states(daemon, cycling, "streaming", 30))

    # The baseline is taken after one round of the same outages: the first time three
    # readers restart at once maps their new rings side by side, a footprint every later
    # round reuses. Growth over the following rounds is what a leak would show.
    outage_round()
    baseline = daemon.settled_sample()
    for _ in range(rounds):
        outage_round()
    time.sleep(2.0)
    after = daemon.settled_sample()
    print(
        f"{len(downs)} outage cycles: to reconnecting median {statistics.median(downs):.2f} s "
        f"max {max(downs):.2f} s; to streaming median {statistics.median(ups):.2f} s "
        f"max {max(ups):.2f} s (first outage included)\n"
        f"after warm-up {baseline}\nafter cycles  {after}"
    )
    assert max(downs) <= STATE_DEADLINE_S
    # Recovery is the remaining backoff plus an RTSP open and a keyframe, and a restarted
    # feed now and then delivers a frame and ends at once (the shared GStreamer media
    # re-syncing to the new RTP stream), costing one more reconnect. So 90% of recoveries,
    # the first outage's included, must meet the deadline and none may take twice as long.
    assert sum(u <= STATE_DEADLINE_S for u in ups) >= 0.9 * len(ups)
    assert max(ups) <= 2 * STATE_DEADLINE_S
    assert after.threads <= baseline.threads
    assert after.fds <= baseline.fds
    assert after.children == baseline.children
    assert after.rss_mb <= baseline.rss_mb * (1 + RSS_TOLERANCE) + RSS_SLACK_MB
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log_text()
