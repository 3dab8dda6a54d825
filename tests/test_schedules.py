"""`[[schedules]]`: when the site's mode switches by local time (gateway.engine.schedules), pure."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import Schedule
from gateway.engine.schedules import Switch, last_switch, next_switch

BERLIN = ZoneInfo("Europe/Berlin")
NIGHT, HOME = Switch("night", time(23, 0)), Switch("home", time(7, 0))
WEEKEND_AWAY = Switch("away", time(9, 30), frozenset({5, 6}))


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)  # type: ignore[misc]


def test_a_schedule_of_the_config_makes_its_switch() -> None:
    assert Switch.of(Schedule(mode="night", at="23:05")) == Switch("night", time(23, 5))
    weekend = Schedule(mode="away", at="09:30", days=["sat", "sun"])
    assert Switch.of(weekend) == WEEKEND_AWAY


def test_the_next_switch_is_the_next_local_time_of_any_schedule() -> None:
    at, switch = next_switch([NIGHT, HOME], BERLIN, local(2026, 12, 7, 12, 0)) or (None, None)
    assert (at, switch) == (local(2026, 12, 7, 23, 0), NIGHT)
    at, switch = next_switch([NIGHT, HOME], BERLIN, local(2026, 12, 7, 23, 0)) or (None, None)
    assert (at, switch) == (local(2026, 12, 8, 7, 0), HOME)  # strictly after: 23:00 itself is past


def test_days_limit_a_schedule_to_those_weekdays() -> None:
    # Monday 7 December 2026: the next Saturday is the 12th.
    assert next_switch([WEEKEND_AWAY], BERLIN, local(2026, 12, 7, 12, 0)) == (
        local(2026, 12, 12, 9, 30),
        WEEKEND_AWAY,
    )
    assert next_switch([WEEKEND_AWAY], BERLIN, local(2026, 12, 12, 10, 0)) == (
        local(2026, 12, 13, 9, 30),
        WEEKEND_AWAY,
    )
    assert next_switch([], BERLIN, local(2026, 12, 7, 12, 0)) is None


def test_after_a_stop_the_switch_that_fell_meanwhile_is_known() -> None:
    # Stopped on Friday at 22:00, started on Saturday at 08:00: night came at 23:00, home at 07:00.
    stopped, started = local(2026, 12, 11, 22, 0), local(2026, 12, 12, 8, 0)
    assert last_switch([NIGHT, HOME], BERLIN, stopped, started) == (local(2026, 12, 12, 7, 0), HOME)
    # Started again at 06:59: only the night switch fell.
    assert last_switch([NIGHT, HOME], BERLIN, stopped, local(2026, 12, 12, 6, 59)) == (
        local(2026, 12, 11, 23, 0),
        NIGHT,
    )
    # Nothing fell between 08:00 and 22:59.
    assert last_switch([NIGHT, HOME], BERLIN, started, local(2026, 12, 12, 22, 59)) is None
    # Stopped for three weeks: the latest switch, not one of long ago.
    long_ago = started - timedelta(days=21)
    assert last_switch([NIGHT, HOME], BERLIN, long_ago, started) == (local(2026, 12, 12, 7, 0), HOME)


def test_a_time_the_clock_skips_switches_as_if_it_had_not_jumped() -> None:
    # 29 March 2026, Europe/Berlin: 02:00 CET becomes 03:00 CEST; 02:30 is 01:30 UTC, 03:30 on the wall.
    early = Switch("early", time(2, 30))
    at, _ = next_switch([early], BERLIN, local(2026, 3, 29, 0, 0)) or (None, None)
    assert at == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def test_a_time_the_clock_shows_twice_switches_once_at_the_first() -> None:
    # 25 October 2026, Europe/Berlin: 03:00 CEST becomes 02:00 CET; 02:30 happens at 00:30 and 01:30 UTC.
    early = Switch("early", time(2, 30))
    at, _ = next_switch([early], BERLIN, local(2026, 10, 25, 0, 0)) or (None, None)
    assert at == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    after_first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    at, _ = next_switch([early], BERLIN, after_first) or (None, None)
    assert at == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)  # the next day, not the second 02:30


def test_two_switches_at_one_moment_leave_the_later_in_the_config() -> None:
    first, second = Switch("away", time(8, 0)), Switch("home", time(8, 0))
    now = local(2026, 12, 7, 7, 0)
    assert next_switch([first, second], BERLIN, now) == (local(2026, 12, 7, 8, 0), second)
    assert last_switch([first, second], BERLIN, now, local(2026, 12, 7, 9, 0)) == (
        local(2026, 12, 7, 8, 0),
        second,
    )


switches = st.lists(
    st.builds(
        Switch,
        st.sampled_from(["home", "away", "night"]),
        st.builds(time, st.integers(0, 23), st.integers(0, 59)),
        st.frozensets(st.integers(0, 6), min_size=1),
    ),
    max_size=4,
)
moments = st.datetimes(datetime(2026, 1, 1), datetime(2027, 12, 31)).map(lambda d: d.replace(tzinfo=UTC))


def scan(found: list[Switch], start: datetime, step: int) -> tuple[datetime, Switch] | None:
    """The first switch minute by minute from `start` (in UTC, which has no DST), over 8 days."""
    minute = start.replace(second=0, microsecond=0)
    for _ in range(8 * 24 * 60):
        hits = [s for s in found if s.at == minute.time() and minute.weekday() in s.days]
        if hits:
            return minute, hits[-1]
        minute += timedelta(minutes=step)
    return None


@settings(max_examples=60, deadline=None, derandomize=True)
@given(switches, moments)
def test_the_next_and_last_switch_agree_with_a_minute_by_minute_scan(
    found: list[Switch], now: datetime
) -> None:
    first_minute_after = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    assert next_switch(found, UTC, now) == scan(found, first_minute_after, 1)
    assert last_switch(found, UTC, now - timedelta(days=30), now) == scan(found, now, -1)
