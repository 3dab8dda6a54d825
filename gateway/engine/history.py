"""Sensor history, pure: numeric readings folded into one point per sensor per minute; time is a parameter.

`gateway.store.history.HistoryStore` writes the points of ended minutes and reads them back.
A point is the minute's min, max and last; two points of one minute (two processes of a shared
subscription, or the halves of a minute around a restart) merge into the point of every reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.engine.formats import Value

__all__ = ["MinutePoint", "MinuteRecorder", "merge_points", "minute_of", "numeric"]

MINUTE = 60
# A minute's points heard from elsewhere (peers, the web process's sensor events) are shown until
# the process that received them has written them: it does within seconds of the minute's end.
SHOWN_AFTER_END = 120


def minute_of(ts: float) -> int:
    """The start (epoch seconds, UTC) of the minute `ts` falls in."""
    return int(ts // MINUTE) * MINUTE


def numeric(value: Value | Any) -> float | None:
    """A reading worth a point: a finite number (not a boolean)."""
    if isinstance(value, float):  # the common case first: this runs for every reading
        return value if value - value == 0.0 else None  # inf - inf and nan - nan are nan
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits: no float holds it
        return None


@dataclass(slots=True)
class MinutePoint:
    minute: int  # its start, epoch seconds
    min: float
    max: float
    last: float
    last_ms: int  # when the last reading came, in milliseconds into the minute: points merge by it

    def add(self, value: float, ms: int) -> None:
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if ms >= self.last_ms:
            self.last, self.last_ms = value, ms

    def as_json(self, iso_minute: str) -> dict[str, Any]:
        return {"t": iso_minute, "min": self.min, "max": self.max, "last": self.last}


def merge_points(a: MinutePoint, b: MinutePoint) -> MinutePoint:
    """The point of one minute's readings, from two points that each saw some of them."""
    later = b if b.last_ms >= a.last_ms else a
    return MinutePoint(a.minute, min(a.min, b.min), max(a.max, b.max), later.last, later.last_ms)


def _fold(points: dict[tuple[str, int], MinutePoint], sensor_id: str, value: float, ts: float) -> None:
    # Inline, not MinutePoint.add: this runs for every reading.
    minute = int(ts // MINUTE) * MINUTE
    ms = int((ts - minute) * 1000)
    if ms >= 60_000:  # rounding at the minute's very end
        ms = 59_999
    key = (sensor_id, minute)
    point = points.get(key)
    if point is None:
        points[key] = MinutePoint(minute, value, value, value, ms)
        return
    if value < point.min:
        point.min = value
    elif value > point.max:
        point.max = value
    if ms >= point.last_ms:
        point.last = value
        point.last_ms = ms


class MinuteRecorder:
    """The points not yet written (readings this process received) and those only shown (all it heard)."""

    def __init__(self) -> None:
        # (sensor id, minute) -> its point: the readings this process owns, to write
        self.unwritten: dict[tuple[str, int], MinutePoint] = {}
        # the same for readings others received: shown, never written here
        self.heard: dict[tuple[str, int], MinutePoint] = {}

    def record(self, sensor_id: str, value: float, ts: float, own: bool = True) -> None:
        """A numeric reading received at `ts` (epoch seconds): by this process (`own`), or told of it."""
        _fold(self.unwritten if own else self.heard, sensor_id, value, ts)

    def take_ended(self, now: float) -> list[tuple[str, MinutePoint]]:
        """The unwritten points of minutes ended by `now`, handed over to be written."""
        current = minute_of(now)
        ended = [key for key in self.unwritten if key[1] < current]
        self._forget_heard(now)
        return [(key[0], self.unwritten.pop(key)) for key in ended]

    def take_all(self) -> list[tuple[str, MinutePoint]]:
        """Every unwritten point, the current minute's too (a graceful stop)."""
        taken, self.unwritten = self.unwritten, {}
        return [(key[0], point) for key, point in taken.items()]

    def give_back(self, points: list[tuple[str, MinutePoint]]) -> None:
        """Points whose write failed: written again with the next ones (merged with any newer readings)."""
        for sensor_id, point in points:
            known = self.unwritten.get((sensor_id, point.minute))
            self.unwritten[(sensor_id, point.minute)] = point if known is None else merge_points(point, known)

    def shown(self, sensor_id: str, since: int) -> dict[int, MinutePoint]:
        """The points in memory of this sensor from minute `since` on: unwritten and heard, merged."""
        out: dict[int, MinutePoint] = {}
        for points in (self.unwritten, self.heard):
            for (sensor, minute), point in points.items():
                if sensor == sensor_id and minute >= since:
                    known = out.get(minute)
                    out[minute] = point if known is None else merge_points(known, point)
        return out

    def _forget_heard(self, now: float) -> None:
        old = minute_of(now) - SHOWN_AFTER_END
        for key in [key for key in self.heard if key[1] < old]:
            del self.heard[key]
