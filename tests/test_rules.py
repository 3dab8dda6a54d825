"""The pure rule engine: equals/above/below with clear (hysteresis), for, cooldown, repeat, offline."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.rules import SensorRules


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
