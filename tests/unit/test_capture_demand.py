"""The take forecast that lets readers skip converting frames nobody will look at."""

from __future__ import annotations

import pytest

from daemon.capture.demand import NOW, DemandForecast


def test_first_take_and_long_gaps_ask_for_every_frame() -> None:
    forecast = DemandForecast()
    assert forecast.taken(100.0) == NOW
    assert forecast.taken(100.25) == pytest.approx(100.25 + 0.8 * 0.25)
    # An outage-sized gap forgets the rhythm instead of forecasting a take far ahead.
    assert forecast.taken(110.0) == NOW
    assert forecast.taken(110.2) == pytest.approx(110.2 + 0.8 * 0.2)


def test_forecast_follows_a_change_of_pace_and_stays_early() -> None:
    forecast = DemandForecast()
    now = 0.0
    forecast.taken(now)
    for _ in range(30):
        now += 0.25
        expected = forecast.taken(now)
    assert expected == pytest.approx(now + 0.2)
    # The pipeline speeds up (a camera went away): the forecast comes in within a few takes,
    # and it never lies beyond the real next take once the new pace is learnt.
    for _ in range(15):
        now += 0.1
        expected = forecast.taken(now)
    assert now < expected < now + 0.1


def test_non_increasing_clock_is_not_a_rhythm() -> None:
    forecast = DemandForecast()
    forecast.taken(10.0)
    assert forecast.taken(10.0) == NOW


def _dispatcher_takes(stall: tuple[float, float], seconds: float) -> list[float]:
    """Tick times at which a fixed-cadence consumer (the CPU dispatcher: a batch every 0.25 s)
    took a frame from a 25 fps reader that converts a frame only when the forecast asks for it,
    with the camera silent during ``stall``. A tick without a pending frame is a miss."""
    period, frame, lead = 0.25, 0.04, 1.5 * 0.04
    forecast = DemandForecast()
    demand, pending, takes = NOW, False, []
    events = sorted(
        [(i * frame, "frame") for i in range(int(seconds / frame))]
        + [(i * period + 0.001, "tick") for i in range(int(seconds / period))]
    )
    for t, kind in events:
        if kind == "frame":
            if not stall[0] <= t < stall[1] and t + lead >= demand:
                pending = True
        elif pending:
            takes.append(t)
            demand, pending = forecast.taken(t), False
        else:
            forecast.miss()
            demand = NOW
    return takes


def test_a_stall_does_not_leave_the_camera_at_every_other_batch() -> None:
    # A 3 s stall makes one long interval; learning from it would forecast every later take
    # too late, and each miss would make the next interval long again.
    takes = _dispatcher_takes(stall=(2.0, 5.0), seconds=15.0)
    recovered = [t for t in takes if t >= 7.0]
    assert len(recovered) >= 0.9 * (15.0 - 7.0) / 0.25, takes
