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


_NAMES = ["sensor.id", "sensor.name", "value", "display", "site", "rule.id", "nope", "alert.x"]


@given(
    st.lists(
        st.one_of(st.text(max_size=8), st.sampled_from([f"{{{n}}}" for n in _NAMES] + ["{", "}", "{}"])),
        max_size=12,
    ).map("".join),
    st.dictionaries(st.sampled_from(_NAMES[:6]), st.text(max_size=6), max_size=6),
)
def test_a_template_fills_as_its_placeholders_say(template: str, fields: dict[str, str]) -> None:
    # Parsed once per template (gateway.engine.templates._parts) and filled per alert: the same
    # text as replacing each placeholder where it stands, unknown ones kept, control characters out.
    import re

    from gateway.engine.templates import fill
    from gateway.engine.text import CONTROL_CHARACTERS

    expected = re.sub(
        r"\{([a-z_]+(?:\.[a-z_]+)?)\}",
        lambda m: CONTROL_CHARACTERS.sub("", fields[m[1]]) if m[1] in fields else m[0],
        template,
    )
    assert fill(template, fields) == expected
