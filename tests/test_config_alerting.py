"""Config of alert management: modes, schedules, a rule's modes and escalation; errors name the key."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config

SENSOR = {"id": "leak", "topic": "z2m/leak", "format": "zigbee2mqtt", "field": "water_leak"}
MODES = {"modes": ["home", "away", "night"], "mode": "home"}


def _rule(**extra: Any) -> dict[str, Any]:
    return {"id": "leak-wet", "sensor": "leak", "when": {"equals": True}, **extra}


def _config(gateway: dict[str, Any] | None = None, **data: Any) -> dict[str, Any]:
    return {"gateway": MODES if gateway is None else gateway, "sensors": [SENSOR], **data}


def test_a_full_example_loads() -> None:
    data = tomllib.loads(
        """
        [gateway]
        modes = ["home", "away", "night"]
        mode = "away"
        timezone = "Europe/Berlin"

        [[schedules]]
        mode = "night"
        at = "23:00"
        days = ["mon", "tue"]

        [[schedules]]
        mode = "home"
        at = "07:30"

        [[sensors]]
        id = "leak"
        topic = "z2m/leak"
        format = "zigbee2mqtt"
        field = "water_leak"

        [[rules]]
        id = "leak-wet"
        sensor = "leak"
        when = { equals = true }
        modes = ["away", "night"]
        escalate = [
          { after = "5m", notify = ["alerts.oncall"] },
          { after = "15m", actions = [{ topic = "siren/set", payload = "ON" }] },
        ]
        """
    )
    config = parse_config(data, {}, "test")
    assert config.gateway.modes == ["home", "away", "night"] and config.gateway.mode == "away"
    assert config.gateway.timezone == "Europe/Berlin"
    assert [(s.mode, s.minute, s.days) for s in config.schedules] == [
        ("night", 23 * 60, ["mon", "tue"]),
        ("home", 7 * 60 + 30, []),
    ]
    rule = config.rules[0]
    assert rule.modes == ["away", "night"]
    assert [step.after for step in rule.escalate] == [300.0, 900.0]
    assert rule.escalate[0].notify == ["alerts.oncall"] and rule.escalate[0].actions == []
    action = rule.escalate[1].actions[0]
    assert (action.topic, action.payload, action.qos, action.retain) == ("siren/set", "ON", 1, False)


def test_defaults_leave_the_feature_off() -> None:
    config = parse_config({}, {}, "test")
    assert config.gateway.modes == [] and config.gateway.mode == "" and config.gateway.timezone == ""
    assert config.schedules == []
    # Without `mode`, the site starts in the first mode.
    assert parse_config({"gateway": {"modes": ["home", "away"]}}, {}, "test").gateway.mode == "home"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            _config({"modes": ["home", "away"], "mode": "holiday"}),
            "gateway.mode: unknown mode 'holiday' (known: home, away)",
        ),
        (_config({"mode": "home"}), "gateway.mode: unknown mode 'home' (no modes: set gateway.modes first)"),
        (_config({"modes": ["home", "home"]}), "gateway.modes: 'home' is listed twice"),
        (_config({"modes": ["at home"]}), "gateway.modes[0]: String should match pattern"),
        (
            _config({"timezone": "Mars/Olympus"}),
            "gateway.timezone: 'Mars/Olympus' is not an IANA time zone such as Europe/Berlin",
        ),
        (_config({"timezone": "../etc"}), "gateway.timezone: '../etc' is not an IANA time zone"),
        (
            _config(schedules=[{"mode": "night", "at": "24:00"}]),
            "schedules[0].at: '24:00' is not a time of day as \"HH:MM\"",
        ),
        (_config(schedules=[{"mode": "night", "at": "7:00"}]), "schedules[0].at: '7:00' is not a time"),
        (_config(schedules=[{"mode": "night", "at": "23:00", "days": ["monday"]}]), "schedules[0].days[0]"),
        (
            _config(schedules=[{"mode": "night", "at": "23:00"}, {"mode": "holiday", "at": "01:00"}]),
            "schedules[1].mode: unknown mode 'holiday' (known: home, away, night)",
        ),
        (_config(schedules=[{"mode": "night"}]), "schedules[0].at: Field required"),
        (
            _config(rules=[_rule(modes=["away", "holiday"])]),
            "rules[leak-wet].modes: unknown mode 'holiday' (known: home, away, night)",
        ),
        (
            _config({}, rules=[_rule(modes=["away"])]),
            "rules[leak-wet].modes: unknown mode 'away' (no modes: set gateway.modes first)",
        ),
        (
            _config(rules=[_rule(escalate=[{"after": "5m"}, {"after": "5m"}])]),
            "rules[leak-wet].escalate[1].after: must be later than the step before "
            "(escalate[0].after is 300s)",
        ),
        (
            _config(rules=[_rule(escalate=[{"after": "5m"}, {"after": "10m"}, {"after": "1m"}])]),
            "rules[leak-wet].escalate[2].after: must be later than the step before",
        ),
        (
            _config(rules=[_rule(escalate=[{"after": "0s"}])]),
            "rules[leak-wet].escalate[0].after: Input should be greater than 0",
        ),
        (_config(rules=[_rule(escalate=[{"after": "soon"}])]), "rules[leak-wet].escalate[0].after: 'soon'"),
        (_config(rules=[_rule(escalate=[{}])]), "rules[leak-wet].escalate[0].after: Field required"),
        (
            _config(rules=[_rule(escalate=[{"after": "5m", "notify": ["oncall"]}])]),
            "rules[leak-wet].escalate[0].notify: notify group 'oncall' must be",
        ),
        (
            _config(rules=[_rule(escalate=[{"after": "5m", "actions": [{"topic": "s", "qos": 3}]}])]),
            "rules[leak-wet].escalate[0].actions[0].qos",
        ),
        (
            _config(rules=[_rule(escalate=[{"after": "5m", "page": True}])]),
            "rules[leak-wet].escalate[0].page: unknown key",
        ),
    ],
)
def test_errors_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, {}, "test")
    assert message in str(info.value)
