"""The pure rule engine: equals/above/below with clear (hysteresis), for, cooldown, repeat, offline."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.engine.rules import SensorRules


def engine(rule: dict, now: float = 0.0) -> SensorRules:
    config = parse_config(
        {
            "sensors": [{"id": "t", "topic": "t", "format": "plain", "expire_after": "60s"}],
            "rules": [{"id": "r", "sensor": "t", **rule}],
        },
        {},
        "test",
    )
    sensor = config.sensors[0]
    return SensorRules(sensor, config.rules_for(sensor), now)


def kinds(transitions: list) -> list[str]:
    return [t.kind for t in transitions]


def test_hysteresis_does_not_flap_inside_the_band() -> None:
    rules = engine({"when": {"above": 30}, "clear": {"below": 28}})
    assert kinds(rules.on_value(31, 1)) == ["raise"]
    assert kinds(rules.on_value(29.5, 2)) == []
    assert kinds(rules.on_value(30.5, 3)) == []
    assert kinds(rules.on_value(27, 4)) == ["clear"]
    assert kinds(rules.on_value(29.5, 5)) == []


def test_for_holds_then_raises_on_tick_and_is_cancelled_when_it_stops_holding() -> None:
    rules = engine({"when": {"equals": "open"}, "for": "10s"})
    assert kinds(rules.on_value("open", 0)) == []
    assert rules.next_deadline() == 10
    assert kinds(rules.on_value("closed", 5)) == []
    assert kinds(rules.tick(10)) == []
    assert kinds(rules.on_value("OPEN", 20)) == []
    assert kinds(rules.tick(30)) == ["raise"]


def test_cooldown_drops_raises() -> None:
    rules = engine({"when": {"equals": False}, "clear": {"equals": True}, "cooldown": "1m"})
    out = []
    for i in range(100):  # ten toggles a second for ten seconds
        out += kinds(rules.on_value(i % 2 == 1, i / 10))
    assert out.count("raise") == 1 and out.count("clear") == 1
    # Each dropped raise is there for the caller to log and count (49 more opens in ten seconds).
    assert [rule.id for rule in rules.dropped] == ["r"] * 49
    rules.dropped.clear()
    # A peer's reading (shared subscriptions) drops it there: that process says so, not this one.
    rules.on_value(True, 10.1, local=False)
    assert kinds(rules.on_value(False, 10.2, local=False)) == [] and rules.dropped == []


def test_repeat_until_acknowledged() -> None:
    rules = engine({"when": {"equals": True}, "repeat": "5m"})
    assert kinds(rules.on_value(True, 0)) == ["raise"]
    assert kinds(rules.tick(300)) == ["repeat"]
    rules.acknowledge("r")
    assert kinds(rules.tick(600)) == [] and rules.next_deadline() is None


def test_offline_by_expiry_and_back() -> None:
    rules = engine({"when": {"offline": True}})
    assert kinds(rules.tick(60)) == ["raise"]  # never reported since start
    assert rules.online is False
    assert kinds(rules.on_value(1, 61)) == ["clear"]


@given(st.lists(st.floats(min_value=0, max_value=60, allow_nan=False), min_size=1, max_size=80))
def test_no_raise_inside_the_band_and_raises_alternate_with_clears(values: list[float]) -> None:
    rules = engine({"when": {"above": 30}, "clear": {"below": 28}})
    active = False
    for i, value in enumerate(values):
        for t in rules.on_value(value, float(i)):
            if t.kind == "raise":
                assert value > 30 and not active
                active = True
            elif t.kind == "clear":
                assert value < 28 and active
                active = False


@settings(max_examples=300)
@given(st.lists(st.tuples(st.floats(0.01, 20), st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_for_never_raises_before_the_condition_held_that_long(steps: list[tuple[float, bool, bool]]) -> None:
    rules = engine({"when": {"equals": True}, "clear": {"equals": False}, "for": "10s"})
    now, held_since = 0.0, None
    for dt, value, is_tick in steps:
        now += dt
        if is_tick:
            out = rules.tick(now)
        else:
            out = rules.on_value(value, now)
            held_since = (now if held_since is None else held_since) if value else None
        for t in out:
            if t.kind == "raise":
                assert held_since is not None and now - held_since >= 10


@settings(max_examples=300)
@given(st.lists(st.tuples(st.floats(0, 8), st.booleans()), max_size=100))
def test_at_most_one_raise_per_cooldown(steps: list[tuple[float, bool]]) -> None:
    rules = engine({"when": {"equals": True}, "clear": {"equals": False}, "cooldown": "30s"})
    now, raised_at = 0.0, []
    for dt, value in steps:
        now += dt
        raised_at += [now for t in rules.on_value(value, now) if t.kind == "raise"]
    assert all(b - a >= 30 for a, b in itertools.pairwise(raised_at))


EVENTS = st.one_of(
    st.tuples(st.just("value"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("available"), st.booleans(), st.just(False)),
    st.tuples(st.just("tick"), st.none(), st.just(False)),
)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.floats(0, 90), EVENTS), max_size=80), st.booleans())
def test_every_raise_is_followed_by_at_most_one_clear(steps: list[Any], restart: bool) -> None:
    config = parse_config(
        {
            "sensors": [{"id": "t", "topic": "t", "format": "plain", "expire_after": "60s", "zone": "z"}],
            "rules": [
                {"id": "on", "sensor": "t", "when": {"equals": 1}, "clear": {"equals": 0}, "repeat": "20s"},
                {"id": "gone", "zone": "z", "when": {"offline": True}, "for": "5s"},
            ],
        },
        {},
        "test",
    )
    sensor = config.sensors[0]
    rules = SensorRules(sensor, config.rules_for(sensor), 0.0)
    if restart:
        rules.restore({"on": False}, 1, True, 0.0)
    active = {"on": restart, "gone": False}
    now = 0.0
    for dt, (kind, arg, retained) in steps:
        now += dt
        if kind == "value":
            out = rules.on_value(arg, now, retained=retained)
        elif kind == "available":
            out = rules.on_availability(arg, now)
        else:
            out = rules.tick(now)
        for t in out:
            if t.kind == "raise":
                assert not active[t.rule.id]
                active[t.rule.id] = True
            elif t.kind == "clear":
                assert active[t.rule.id]
                active[t.rule.id] = False
            else:
                assert active[t.rule.id]  # repeats only while active


def test_a_retained_replay_of_an_unchanged_value_raises_nothing() -> None:
    rules = engine({"when": {"equals": "open"}, "clear": {"equals": "closed"}, "cooldown": "1m"})
    assert kinds(rules.on_value("open", 0)) == ["raise"]
    assert kinds(rules.on_value("closed", 1)) == ["clear"]
    assert kinds(rules.on_value("open", 2)) == []  # inside the cooldown: dropped
    assert kinds(rules.on_value("open", 100, retained=True)) == []  # the broker replays it: not news
    assert kinds(rules.on_value("open", 101)) == ["raise"]  # a live report of the open door is
    assert kinds(rules.on_value("closed", 102, retained=True)) == ["clear"]  # clears always apply


def test_after_a_restart_the_same_value_is_not_a_trigger_but_a_for_timer_restarts() -> None:
    rules = engine({"when": {"above": 30}, "clear": {"below": 28}})
    rules.restore({}, 35, True, 0)  # above 30 before the restart, with no open alert (cooldown)
    assert kinds(rules.on_value(35, 1)) == []
    assert kinds(rules.on_value(36, 2)) == ["raise"]

    held = engine({"when": {"above": 30}, "for": "10s"})
    held.restore({}, 35, True, 0)
    assert kinds(held.on_value(35, 1)) == []  # the hold starts again from here
    assert held.next_deadline() == 11
    assert kinds(held.tick(11)) == ["raise"]


def test_coming_back_online_is_not_a_trigger_for_value_rules() -> None:
    rules = engine({"when": {"equals": True}, "clear": {"equals": False}, "cooldown": "10m"})
    assert kinds(rules.on_value(True, 0)) == ["raise"]
    assert kinds(rules.on_value(False, 1)) == ["clear"]
    assert kinds(rules.on_value(True, 2)) == []  # cooldown
    assert kinds(rules.on_availability(False, 700)) == []
    assert kinds(rules.on_availability(True, 701)) == []
    assert kinds(rules.on_value(True, 702)) == []  # the same state as before going offline
    assert kinds(rules.on_value(False, 703)) == []  # inactive: nothing to clear
    assert kinds(rules.on_value(True, 704)) == ["raise"]


def test_reconfigure_keeps_the_state_of_rules_that_stay() -> None:
    rules = engine({"when": {"above": 30}, "clear": {"below": 28}})
    assert kinds(rules.on_value(31, 0)) == ["raise"]
    config = parse_config(
        {
            "sensors": [{"id": "t", "topic": "t", "format": "plain"}],
            "rules": [
                {"id": "r", "sensor": "t", "when": {"above": 40}, "clear": {"below": 20}},
                {"id": "new", "sensor": "t", "when": {"below": 25}},
            ],
        },
        {},
        "test",
    )
    rules.reconfigure(config.sensors[0], config.rules_for(config.sensors[0]))
    assert kinds(rules.on_value(25, 1)) == []  # "r" is still active: no second raise, new band for the clear
    assert kinds(rules.on_value(19, 2)) == ["clear", "raise"]


def test_a_sensor_offline_before_a_restart_comes_back_with_its_next_message() -> None:
    rules = engine({"when": {"offline": True}})
    rules.restore({"r": False}, 20, False, 0)  # expired before the restart, its alert open
    assert rules.online is False
    assert kinds(rules.on_value(21, 1)) == ["clear"]
    assert rules.online is True


def _armed(modes: list[str], for_: str = "0s") -> Any:
    config = parse_config(
        {
            "gateway": {"modes": ["home", "away"], "mode": "home"},
            "sensors": [{"id": "t", "topic": "t", "format": "plain"}],
            "rules": [{"id": "r", "sensor": "t", "when": {"equals": True}, "modes": modes, "for": for_}],
        },
        {},
        "test",
    )
    return config.sensors[0], config.rules_for(config.sensors[0])


def test_a_reload_that_lets_a_held_rule_raise_raises_it_then() -> None:
    sensor, rules = _armed(["away"])
    engine = SensorRules(sensor, rules, 0.0, "home")
    assert kinds(engine.on_value(True, 1)) == [] and engine.held_back  # held back at home
    assert kinds(engine.release_held(2)) == []  # the same rules: still held
    engine.reconfigure(*_armed(["home", "away"], for_="5s"))
    assert kinds(engine.release_held(3)) == []  # its `for` counts from the reload
    assert kinds(engine.tick(8)) == ["raise"]
    assert kinds(engine.release_held(9)) == []  # raised once


def test_a_peers_report_older_than_a_reading_here_changes_nothing() -> None:
    # Shared subscriptions: "open" reached process A at 1.0, "closed" reached B at 1.2, and A's
    # report of "open" reaches B after that. B must not think the door open (nor raise again).
    b = engine({"when": {"equals": "open"}, "clear": {"equals": "closed"}})
    assert kinds(b.on_value("closed", 1.2)) == []
    assert kinds(b.on_value("open", 1.0, local=False)) == []
    assert b.value == "closed" and not b.states["r"].active
    assert kinds(b.on_availability(False, 1.1, local=False)) == [] and b.online is True
    # A newer report is applied: the door opened again at 1.5, seen by A.
    assert kinds(b.on_value("open", 1.5, local=False)) == ["raise"]


@settings(max_examples=400)
@given(
    st.lists(
        st.tuples(
            st.floats(0.001, 0.05), st.sampled_from(["open", "closed"]), st.booleans(), st.floats(0, 0.1)
        ),
        min_size=1,
        max_size=40,
    )
)
def test_two_processes_end_where_the_last_reading_left_the_door(
    readings: list[tuple[float, str, bool, float]],
) -> None:
    # Each reading reaches process A or B; the other hears of it `delay` later, in the order its peer
    # sent them (batches leave one at a time). Whatever the interleaving, once every report has
    # arrived both processes hold the last reading's state, and each side's raises and clears alternate.
    procs = {p: engine({"when": {"equals": "open"}, "clear": {"equals": "closed"}}) for p in "AB"}
    deliveries = []  # (arrives, order, process, value, received, local)
    sent_last = {"A": 0.0, "B": 0.0}
    now = 0.0
    for i, (gap, value, to_a, delay) in enumerate(readings):
        now += gap
        here, there = ("A", "B") if to_a else ("B", "A")
        deliveries.append((now, 2 * i, here, value, now, True))
        sent_last[here] = max(now + delay, sent_last[here])  # in order behind the batch before it
        deliveries.append((sent_last[here], 2 * i + 1, there, value, now, False))
    active = {"A": False, "B": False}
    for _arrives, _order, proc, value, received, local in sorted(deliveries):
        for t in procs[proc].on_value(value, received, local=local):
            assert (t.kind == "raise") != active[proc]
            active[proc] = t.kind == "raise"
    last = readings[-1][1]
    for proc in procs.values():
        assert proc.value == last and proc.states["r"].active == (last == "open")
