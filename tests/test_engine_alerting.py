"""The engine's parts of alert management, one by one: silences, escalation, modes in the rules."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import EscalationStep, parse_config
from gateway.engine.escalation import due_levels, next_deadline
from gateway.engine.rules import SensorRules, may_raise
from gateway.engine.silences import Silence, SilenceError, active, matches, parse_silence, silencing

ALERT = {"sensor": "fridge", "zone": "kitchen", "rule": "warm", "severity": "warning"}


def _silence(id: str = "m1", ends_at: float = 100.0, **matchers: str) -> Silence:
    keys = {k: matchers.get(k) for k in ("sensor", "zone", "rule", "severity")}
    return Silence(id=id, **keys, comment=None, created_by="test", created_at=0.0, ends_at=ends_at)


def test_a_request_becomes_a_silence_from_now() -> None:
    silence = parse_silence(
        {"zone": "kitchen", "for": "2h", "comment": "painting"}, id="m1", created_by="api:ops", now=1000.0
    )
    assert silence.as_dict() == {
        "id": "m1",
        "sensor": None,
        "zone": "kitchen",
        "rule": None,
        "severity": None,
        "comment": "painting",
        "created_by": "api:ops",
        "created_at": 1000.0,
        "ends_at": 1000.0 + 7200,
    }


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ([], 'a silence is an object such as {"zone": "kitchen", "for": "2h"}'),
        ({"for": "1h"}, "give at least one of sensor, zone, rule, severity"),
        ({"zone": "kitchen"}, "'for' is required: a duration such as 30m or 2h (at most 7d)"),
        ({"zone": "kitchen", "for": "soon"}, "for: 'soon' is not a duration"),
        ({"zone": "kitchen", "for": "8d"}, "for: must be more than 0 and at most 7d"),
        ({"zone": "kitchen", "for": "0s"}, "for: must be more than 0 and at most 7d"),
        ({"zone": "kitchen", "for": "1h", "room": "x"}, "unknown key 'room' (known: sensor, zone, rule"),
        ({"zone": 3, "for": "1h"}, "zone must be a non-empty string"),
        ({"zone": " ", "for": "1h"}, "zone must be a non-empty string"),
        ({"severity": "high", "for": "1h"}, "severity must be one of critical, warning, info"),
        ({"zone": "kitchen", "for": "1h", "comment": 5}, "comment must be a string"),
        ({"zone": "kitchen", "for": "1h", "comment": "x" * 501}, "comment is longer than 500 characters"),
        ({"zone": "k" * 65, "for": "1h"}, "zone is longer than 64 characters"),
    ],
)
def test_a_bad_request_says_what_is_wrong(request_: Any, message: str) -> None:
    with pytest.raises(SilenceError) as info:
        parse_silence(request_, id="m1", created_by="mqtt", now=0.0)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_seven_days_is_the_longest() -> None:
    assert parse_silence({"rule": "warm", "for": "7d"}, id="m", created_by="mqtt", now=0).ends_at == 7 * 86400


def test_every_given_matcher_must_match() -> None:
    assert matches(_silence(zone="kitchen"), ALERT)
    assert matches(_silence(sensor="fridge", rule="warm"), ALERT)
    assert not matches(_silence(sensor="fridge", rule="open"), ALERT)
    assert not matches(_silence(severity="critical"), ALERT)
    with pytest.raises(SilenceError, match="at least one of"):
        _silence()


def test_active_from_creation_until_its_end() -> None:
    silence = _silence(zone="kitchen", ends_at=100.0)
    assert [active(silence, t) for t in (-1.0, 0.0, 99.9, 100.0)] == [False, True, True, False]


def test_silencing_names_the_longest_active_match() -> None:
    silences = [
        _silence("short", 50.0, zone="kitchen"),
        _silence("long", 90.0, sensor="fridge"),
        _silence("other", 500.0, zone="garage"),
    ]
    assert silencing(silences, ALERT, 10.0) == "long"
    assert silencing(silences, ALERT, 60.0) == "long"
    assert silencing(silences, ALERT, 95.0) is None


STEPS = [EscalationStep(after=300), EscalationStep(after=900)]


def test_steps_fall_due_in_order_each_once() -> None:
    assert due_levels(0.0, "active", False, STEPS, 0, 299.0) == []
    assert due_levels(0.0, "active", False, STEPS, 0, 300.0) == [1]
    assert due_levels(0.0, "active", False, STEPS, 1, 300.0) == []
    assert next_deadline(0.0, "active", False, STEPS, 1) == 900.0
    # A restart past both: each fires once after it.
    assert due_levels(0.0, "active", False, STEPS, 0, 5000.0) == [1, 2]
    assert next_deadline(0.0, "active", False, STEPS, 2) is None


@pytest.mark.parametrize(
    ("state", "silenced"), [("acknowledged", False), ("cleared", False), ("active", True)]
)
def test_no_step_after_ack_or_clear_nor_while_silenced(state: Any, silenced: bool) -> None:
    assert due_levels(0.0, state, silenced, STEPS, 0, 5000.0) == []
    assert next_deadline(0.0, state, silenced, STEPS, 0) is None


def test_after_a_silence_steps_count_from_its_end() -> None:
    # Raised at 0, silenced until 1000: the base moves to 1000, the fired level stays.
    assert due_levels(1000.0, "active", False, STEPS, 1, 1500.0) == []
    assert due_levels(1000.0, "active", False, STEPS, 1, 1900.0) == [2]


CONFIG = parse_config(
    {
        "gateway": {"modes": ["home", "away", "night"]},
        "sensors": [{"id": "hall", "topic": "z2m/hall", "format": "zigbee2mqtt", "field": "occupancy"}],
        "rules": [
            {"id": "motion", "sensor": "hall", "when": {"equals": True}, "modes": ["away", "night"]},
            {"id": "long", "sensor": "hall", "when": {"equals": True}, "for": "30s", "modes": ["away"]},
            {"id": "always", "sensor": "hall", "when": {"equals": True}},
        ],
    },
    {},
    "test",
)


def _board(mode: str) -> SensorRules:
    sensor = CONFIG.sensors[0]
    return SensorRules(sensor, CONFIG.rules_for(sensor), 0.0, mode)


def _kinds(transitions: list[Any]) -> list[tuple[str, str]]:
    return [(t.kind, t.rule.id) for t in transitions]


def test_may_raise() -> None:
    motion, _, always = CONFIG.rules
    assert may_raise(always, "home") and may_raise(always, "")
    assert may_raise(motion, "away") and not may_raise(motion, "home")


def test_outside_its_modes_a_rule_follows_but_does_not_raise() -> None:
    board = _board("home")
    assert _kinds(board.on_value(True, 1.0)) == [("raise", "always")]
    assert [r.id for r in board.held_back] == ["motion"]
    assert _kinds(board.tick(100.0)) == []  # `long` held past its `for`: still not raised
    assert [r.id for r in board.held_back] == ["motion", "long"]
    # A switch into its mode with the condition holding raises it once, `for` counting from the switch.
    assert _kinds(board.set_mode("away", 200.0)) == [("raise", "motion")]
    assert board.next_deadline() == 230.0
    assert _kinds(board.tick(229.0)) == []
    assert _kinds(board.tick(230.0)) == [("raise", "long")]
    assert _kinds(board.set_mode("night", 240.0)) == []
    assert _kinds(board.set_mode("away", 250.0)) == []
    # Alerts already open stay open when the mode changes; they clear as always.
    assert _kinds(board.set_mode("home", 260.0)) == []
    assert _kinds(board.on_value(False, 270.0)) == [
        ("clear", "motion"),
        ("clear", "long"),
        ("clear", "always"),
    ]


def test_a_condition_that_ended_before_the_switch_raises_nothing() -> None:
    board = _board("home")
    board.on_value(True, 1.0)
    board.on_value(False, 2.0)
    assert _kinds(board.set_mode("away", 3.0)) == []


def test_a_hold_begun_in_another_mode_starts_again_at_the_switch() -> None:
    board = _board("home")
    board.on_value(True, 0.0)
    assert _kinds(board.set_mode("away", 20.0)) == [("raise", "motion")]
    assert _kinds(board.tick(30.0)) == []  # 30s since the reading, 10s since the switch
    assert _kinds(board.tick(50.0)) == [("raise", "long")]


def test_without_modes_nothing_changes() -> None:
    config = parse_config(
        {
            "sensors": [{"id": "hall", "topic": "z2m/hall", "format": "zigbee2mqtt", "field": "occupancy"}],
            "rules": [{"id": "motion", "sensor": "hall", "when": {"equals": True}}],
        },
        {},
        "test",
    )
    board = SensorRules(config.sensors[0], config.rules, 0.0)
    assert _kinds(board.on_value(True, 1.0)) == [("raise", "motion")]
    assert _kinds(board.set_mode("", 2.0)) == [] and board.held_back == []
