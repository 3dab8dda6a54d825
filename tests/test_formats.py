"""Payload parsers: what each format yields, and a clear error for what does not fit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.formats import PayloadError, compare_equal, parse_availability, parse_value


@pytest.mark.parametrize(
    ("payload", "fmt", "field", "expected"),
    [
        (b'{"contact":false,"battery":90}', "zigbee2mqtt", "contact", False),
        (b'{"temp":{"water":61.5}}', "json", "temp.water", 61.5),
        (b'{"DS18B20":{"Temperature":20.6}}', "tasmota", "DS18B20.Temperature", 20.6),
        (b"ON", "tasmota", "", "ON"),
        (b"21.5", "plain", "", 21.5),
        (b"42", "plain", "", 42),
        (b"true", "plain", "", True),
        (b"open", "plain", "", "open"),
    ],
)
def test_values(payload: bytes, fmt: str, field: str, expected: object) -> None:
    value = parse_value(payload, fmt, field)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("payload", "fmt", "field", "error"),
    [
        (b"{not json", "json", "a", "not valid JSON"),
        (b"\xff\xfe", "json", "a", "not UTF-8"),
        (b"", "json", "a", "empty"),
        (b'{"a":NaN}', "json", "a", "NaN is not a value"),
        (b'{"a":Infinity}', "json", "a", "Infinity is not a value"),
        (b'{"b":1}', "json", "a", "not found"),
        (b'{"a":{"x":1}}', "json", "a", "an object"),
        (b'{"a":null}', "json", "a", "null"),
        (b"[" * 10_000 + b"]" * 10_000, "json", "a", "nested too deeply"),
        (b"x" * 70_000, "plain", "", "over max_payload"),
        (b"nan", "plain", "", "not a value"),
    ],
)
def test_errors(payload: bytes, fmt: str, field: str, error: str) -> None:
    with pytest.raises(PayloadError, match=error):
        parse_value(payload, fmt, field)


def test_availability() -> None:
    assert parse_availability(b"online") is True
    assert parse_availability(b"Offline") is False
    assert parse_availability(b'{"state":"online"}') is True
    with pytest.raises(PayloadError, match="neither online nor offline"):
        parse_availability(b"maybe")


def test_equals_rules() -> None:
    assert compare_equal("ON", "on") and compare_equal("ON", True) and not compare_equal(1, True)
    assert compare_equal(True, "on") and compare_equal(False, "OFF") and not compare_equal(True, "off")
    assert compare_equal(False, False) and not compare_equal(0, False)


@given(st.binary(max_size=300), st.sampled_from(["json", "zigbee2mqtt", "tasmota", "plain"]))
def test_any_bytes_give_a_value_or_a_payload_error(payload: bytes, fmt: str) -> None:
    try:
        value = parse_value(payload, fmt, "a.b")
    except PayloadError:
        return
    assert isinstance(value, bool | int | float | str)
