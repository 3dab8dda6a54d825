"""Payload parsers: what each format yields, and a clear error for what does not fit."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.engine import formats
from gateway.engine.formats import PayloadError, _load_json, compare_equal, parse_availability, parse_value
from protocols.telegram.updates import parse_command


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
        (b"-3", "plain", "", -3),
        (b"+2.5e-1", "plain", "", 0.25),
        (b"9007199254740993", "plain", "", 9007199254740993),  # exact, not through a float
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


@pytest.mark.parametrize(
    "payload",
    ["1_000", "\u0663", "\u0661\u0662", "\uff11\uff12", "0x10", "1 000", "\u00b2"],
)
def test_only_ascii_decimal_numbers_are_numbers(payload: str) -> None:
    """`1_000`, Arabic-Indic or full-width digits: float() takes them; a device would not send them."""
    assert parse_value(payload.encode(), "plain", "") == payload


@pytest.mark.parametrize(
    ("payload", "fmt", "field"),
    [
        (b'{"contact": ' + b"1" * 5000 + b"}", "zigbee2mqtt", "contact"),
        (b'{"temp": {"water": -' + b"9" * 4301 + b"}}", "json", "temp.water"),
        (b"1" * 5000, "plain", ""),
        (b'{"DS18B20": {"Temperature": ' + b"2" * 6000 + b"}}", "tasmota", "DS18B20.Temperature"),
        (b"7" * 5000, "tasmota", ""),
    ],
)
def test_an_integer_over_python_s_digit_limit_is_bad_input(payload: bytes, fmt: str, field: str) -> None:
    with pytest.raises(PayloadError, match="4300 digits"):
        parse_value(payload, fmt, field)
    with pytest.raises(PayloadError):
        parse_availability(b'{"state": ' + b"1" * 5000 + b"}")


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


# Digit runs around Python's 4,300-digit limit for int(), bare or as a JSON value.
long_numbers = st.builds(
    lambda sign, digits, frame: frame.replace(b"N", sign + b"7" * digits),
    st.sampled_from([b"", b"-", b"+"]),
    st.integers(4290, 4400) | st.integers(1, 400),
    st.sampled_from([b"N", b'{"a":{"b":N}}', b'{"a":N}', b"[N]", b'{"state":N}', b"N.5e3", b"0.N"]),
)
payloads = st.one_of(st.binary(max_size=300), long_numbers, st.text(max_size=60).map(str.encode))


@given(payloads, st.sampled_from(["json", "zigbee2mqtt", "tasmota", "plain"]), st.sampled_from(["a.b", ""]))
def test_any_bytes_give_a_value_or_a_payload_error(payload: bytes, fmt: str, field: str) -> None:
    try:
        value = parse_value(payload, fmt, field or ("a.b" if fmt in ("json", "zigbee2mqtt") else ""))
    except PayloadError:
        pass
    else:
        assert isinstance(value, bool | int | float | str)
    try:
        assert parse_availability(payload) in (True, False)
    except PayloadError:
        pass


json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
).map(lambda doc: json.dumps(doc).encode())


@given(
    st.one_of(st.binary(max_size=300), json_documents), st.sampled_from(["json", "zigbee2mqtt", "tasmota"])
)
def test_any_json_document_gives_a_value_or_a_payload_error(payload: bytes, fmt: str) -> None:
    try:
        value = parse_value(payload, fmt, "temp.water")
    except PayloadError:
        return
    assert isinstance(value, bool | int | float | str)
    assert not isinstance(value, float) or math.isfinite(value)  # no NaN or Infinity gets through


@given(st.one_of(st.binary(max_size=200), json_documents))
def test_any_availability_payload_is_online_offline_or_an_error(payload: bytes) -> None:
    try:
        assert parse_availability(payload) in (True, False)
    except PayloadError:
        pass


@given(st.text(max_size=200))
def test_any_telegram_text_parses_to_a_command_or_none(text: str) -> None:
    command, args = parse_command(text, "gateway_bot")
    assert command is None or (command and command == command.lower() and " " not in command)
    assert all(isinstance(a, str) and a for a in args)


padding = st.text(alphabet=" \t\n\r\u00a0\x0b\u2003", max_size=3)


@given(
    padding,
    st.one_of(json_documents.map(bytes.decode), st.text(max_size=40)),
    padding,
    st.sampled_from(["", "1", "{}", "x", '"']),
)
def test_a_json_payload_reads_as_json_decode_read_it(head: str, doc: str, tail: str, extra: str) -> None:
    """The reader skips JSONDecoder.decode's wrapper (gateway.engine.formats._load_json): the same
    documents are read, to the same value, and the same ones refused with the same message
    (at the same character), as through `decode` with the same decoder."""
    text = head + doc + tail + extra

    def through_decode() -> object:  # the reader as it was (e91b6be's parent)
        if not text.strip():
            raise PayloadError("payload is empty")
        try:
            return formats._json.decode(text)
        except json.JSONDecodeError as err:
            raise PayloadError(f"payload is not valid JSON ({err.msg} at char {err.pos})") from None

    try:
        expected = through_decode()
    except PayloadError as err:
        with pytest.raises(PayloadError) as got:
            _load_json(text)
        assert str(got.value) == str(err)
        return
    assert _load_json(text) == expected
