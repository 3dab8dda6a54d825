"""Templates: a sensor's value fills a message or an action's payload and can rewrite neither."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.engine.templates import fill_payload, render_message

INJECTED = 'x","state":"ON'
ALERT: dict[str, Any] = {
    "id": "abc234",
    "rule": "panel-alarm",
    "sensor": "panel",
    "severity": "critical",
    "state": "cleared",
    "message": f"Panel says {INJECTED}",
    "value": INJECTED,
    "acknowledged_by": None,
}


def test_a_value_cannot_turn_a_json_off_command_into_on() -> None:
    payload = fill_payload('{"state":"OFF","why":"{alert.message}","reading":"{alert.value}"}', ALERT)
    assert json.loads(payload) == {"state": "OFF", "why": ALERT["message"], "reading": INJECTED}


def test_placeholders_outside_strings_are_json_values() -> None:
    alert = {**ALERT, "value": 21.5}
    payload = fill_payload('{"v":{alert.value},"by":{alert.acknowledged_by},"alert":{alert}}', alert)
    assert json.loads(payload) == {"v": 21.5, "by": None, "alert": alert}
    assert json.loads(fill_payload('["{alert.id}", {alert.value}]', {**ALERT, "value": True})) == [
        "abc234",
        True,
    ]


def test_plain_text_payloads_lose_control_characters_only() -> None:
    alert = {**ALERT, "value": "on\r\nOFF\x00\x1b[2J"}
    assert fill_payload("{alert.value}", alert) == "onOFF[2J"
    assert fill_payload("{alert.id} {alert.acknowledged_by}|", alert) == "abc234 |"
    # `{alert}` alone is the alert's JSON, as before.
    assert json.loads(fill_payload("{alert}", ALERT)) == ALERT
    # An unknown placeholder stays as written, in JSON and in text.
    assert fill_payload('{"a":"{alert.nope}"}', ALERT) == '{"a":"{alert.nope}"}'


def test_a_message_value_cannot_add_a_line() -> None:
    config = parse_config(
        {
            "sensors": [{"id": "t", "topic": "t", "format": "plain"}],
            "rules": [{"id": "r", "sensor": "t", "when": {"offline": True}, "message": "{value} at {site}"}],
        },
        {},
        "test",
    )
    message = render_message(config.rules[0].message, config.rules[0], config.sensors[0], "a\nb\u2028c", "s")
    assert message == "abc at s"


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()


@given(
    st.fixed_dictionaries({k: json_scalars for k in ("value", "message", "id", "acknowledged_by")}),
    st.sampled_from(
        [
            '{"state":"OFF","v":"{alert.value}","m":"{alert.message}"}',
            '{"state":"OFF","v":{alert.value},"m":{alert.message},"all":{alert}}',
            '[{"state":"OFF"},"{alert.id}",{alert.acknowledged_by},"{alert}"]',
        ]
    ),
)
def test_any_alert_fills_a_json_template_with_json(alert: dict[str, Any], template: str) -> None:
    doc = json.loads(fill_payload(template, alert))
    if isinstance(doc, dict):
        assert doc["state"] == "OFF" and set(doc) <= {"state", "v", "m", "all"}
    else:
        assert doc[0] == {"state": "OFF"} and len(doc) == 4


@pytest.mark.parametrize("text", ["a\nb", "a\rb", "\x1b[31mred", "tab\there", "nul\x00"])
def test_any_text_template_stays_on_one_line(text: str) -> None:
    out = fill_payload("value={alert.value};", {"value": text})
    assert out.isprintable() and out.startswith("value=") and out.endswith(";")
