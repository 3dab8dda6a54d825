"""Sensor history, pure (gateway.engine.history): readings folded per minute, with time as a parameter."""

from __future__ import annotations

import math

from gateway.engine.history import MinutePoint, MinuteRecorder, merge_points, minute_of, numeric

T0 = 1_796_558_400.0  # 2026-12-06 12:00:00 UTC, a minute's start


def points(taken: list[tuple[str, MinutePoint]]) -> list[tuple[str, int, float, float, float]]:
    return sorted((s, p.minute, p.min, p.max, p.last) for s, p in taken)


def test_a_minute_is_written_once_it_ended_as_its_min_max_and_last() -> None:
    rec = MinuteRecorder()
    for offset, value in ((0.0, 21.5), (5.2, 19.0), (30.0, 25.25), (59.999, 22.0), (60.0, 30.0)):
        rec.record("boiler", value, T0 + offset)
    rec.record("freezer", -18.0, T0 + 12)
    assert rec.take_ended(T0 + 59.9) == []  # the minute has not ended
    assert points(rec.take_ended(T0 + 61)) == [
        ("boiler", int(T0), 19.0, 25.25, 22.0),
        ("freezer", int(T0), -18.0, -18.0, -18.0),
    ]
    assert rec.take_ended(T0 + 62) == []  # taken once
    # The next minute: its first reading came at its first instant.
    assert points(rec.take_ended(T0 + 121)) == [("boiler", int(T0) + 60, 30.0, 30.0, 30.0)]


def test_a_graceful_stop_takes_the_current_minute_too() -> None:
    rec = MinuteRecorder()
    rec.record("boiler", 70.0, T0 + 3)
    rec.record("boiler", 71.0, T0 + 63)
    assert points(rec.take_all()) == [
        ("boiler", int(T0), 70.0, 70.0, 70.0),
        ("boiler", int(T0) + 60, 71.0, 71.0, 71.0),
    ]
    assert rec.take_all() == []


def test_two_processes_halves_of_a_minute_merge_into_the_minute_of_every_reading() -> None:
    # Process A got 10 (at :05) and 40 (at :50); process B got -3 (at :20) and 12 (at :55).
    a, b = MinuteRecorder(), MinuteRecorder()
    a.record("t", 10.0, T0 + 5)
    b.record("t", -3.0, T0 + 20)
    a.record("t", 40.0, T0 + 50)
    b.record("t", 12.0, T0 + 55)
    (_, pa), (_, pb) = a.take_all()[0], b.take_all()[0]
    for merged in (merge_points(pa, pb), merge_points(pb, pa)):
        assert (merged.min, merged.max, merged.last) == (-3.0, 40.0, 12.0)


def test_a_failed_write_is_given_back_and_merged_with_what_came_since() -> None:
    rec = MinuteRecorder()
    rec.record("t", 5.0, T0 + 10)
    taken = rec.take_ended(T0 + 61)
    rec.give_back(taken)
    assert points(rec.take_ended(T0 + 70)) == [("t", int(T0), 5.0, 5.0, 5.0)]
    rec.give_back(taken)
    rec.record("t", 1.0, T0 + 59)  # late in the same minute, after the failed write
    assert points(rec.take_all()) == [("t", int(T0), 1.0, 5.0, 1.0)]


def test_shown_points_are_the_unwritten_and_the_heard_until_the_owner_wrote_them() -> None:
    rec = MinuteRecorder()
    rec.record("t", 20.0, T0 + 1)  # ours
    rec.record("t", 26.0, T0 + 2, own=False)  # a peer's
    rec.record("t", 23.0, T0 + 62, own=False)
    rec.record("other", 1.0, T0 + 3)
    shown = rec.shown("t", int(T0))
    assert [(m, p.min, p.max, p.last) for m, p in sorted(shown.items())] == [
        (int(T0), 20.0, 26.0, 26.0),
        (int(T0) + 60, 23.0, 23.0, 23.0),
    ]
    assert list(rec.shown("t", int(T0) + 60)) == [int(T0) + 60]
    # Ours are handed to be written; what peers told is never written here, and goes two minutes on.
    assert points(rec.take_ended(T0 + 125)) == [
        ("other", int(T0), 1.0, 1.0, 1.0),
        ("t", int(T0), 20.0, 20.0, 20.0),
    ]
    assert sorted(rec.shown("t", 0)) == [int(T0), int(T0) + 60]
    rec.take_ended(T0 + 60 * 4)
    assert rec.shown("t", 0) == {}


def test_only_finite_numbers_are_history() -> None:
    assert [numeric(v) for v in (21, 21.5, -0.0, True, False, "21", None, math.nan, -math.inf, 10**400)] == [
        21.0,
        21.5,
        -0.0,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    ]
    assert minute_of(T0 + 59.999) == int(T0) and minute_of(T0 - 0.001) == int(T0) - 60
