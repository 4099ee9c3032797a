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
