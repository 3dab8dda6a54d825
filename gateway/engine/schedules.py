"""When `[[schedules]]` switch the site's mode: by local wall-clock time in the site's time zone, pure.

A switch at a time the clock skips (the spring-forward hour) happens as if the clock had not
jumped: `02:30` in Europe/Berlin on the last Sunday of March is 03:30 CEST. A time the clock
shows twice (autumn) switches once, at the first of the two. After a restart, `last_switch`
says which switch fell while the gateway was stopped, so the mode is right at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from gateway.config import Schedule
from gateway.config.alerting import WEEKDAYS

__all__ = ["Switch", "last_switch", "next_switch"]

# A week and a day either way: every switch with at least one day falls within it.
_HORIZON_DAYS = 8


@dataclass(frozen=True)
class Switch:
    mode: str
    at: time
    days: frozenset[int] = frozenset(range(7))  # Monday is 0, as date.weekday()

    @classmethod
    def of(cls, schedule: Schedule) -> Switch:
        """The switch a validated `[[schedules]]` entry makes (no `days`: every day)."""
        days = frozenset(WEEKDAYS.index(day) for day in schedule.days) or frozenset(range(7))
        return cls(schedule.mode, time(schedule.minute // 60, schedule.minute % 60), days)


def _moment(day: date, at: time, zone: tzinfo) -> datetime:
    # fold=0: the first of an hour shown twice; a skipped time maps past the gap (see the docstring).
    local = datetime.combine(day, at, tzinfo=zone)
    return local.astimezone(UTC)


def _moments(
    switches: Iterable[Switch], zone: tzinfo, around: datetime
) -> Iterator[tuple[datetime, int, Switch]]:
    """Each switch's moments within the horizon around `around`, with the switch's place in the config."""
    today = around.astimezone(zone).date()
    for offset in range(-_HORIZON_DAYS, _HORIZON_DAYS + 1):
        day = today + timedelta(days=offset)
        for place, switch in enumerate(switches):
            if day.weekday() in switch.days:
                yield _moment(day, switch.at, zone), place, switch


def next_switch(switches: Iterable[Switch], zone: tzinfo, now: datetime) -> tuple[datetime, Switch] | None:
    """The first switch strictly after `now` (an aware datetime), or None when there are none.

    Two at the same moment: the later in the config, whose mode is the one that stays."""
    later = [(at, -place, s) for at, place, s in _moments(list(switches), zone, now) if at > now]
    if not later:
        return None
    at, _, switch = min(later, key=lambda item: (item[0], item[1]))
    return at, switch


def last_switch(
    switches: Iterable[Switch], zone: tzinfo, after: datetime, now: datetime
) -> tuple[datetime, Switch] | None:
    """The latest switch in (`after`, `now`]: what a gateway stopped since `after` missed; None if none.

    Two at the same moment: the later in the config. Every switch comes round within a week, so
    the last week holds the latest one however long ago `after` is.
    """
    earlier = [(at, place, s) for at, place, s in _moments(list(switches), zone, now) if after < at <= now]
    if not earlier:
        return None
    at, _, switch = max(earlier, key=lambda item: (item[0], item[1]))
    return at, switch
