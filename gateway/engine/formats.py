"""Sensor payload parsers: raw MQTT bytes in, a plain value or a clear error out.

Pure functions with no I/O, so they can be fuzzed; the sensor consumer calls them.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from gateway.config.sensors import Sensor

Value = bool | int | float | str

__all__ = [
    "FieldMissing",
    "PayloadError",
    "Value",
    "compare_equal",
    "decoder",
    "parse_availability",
    "parse_value",
    "read_value",
    "shape",
]


class PayloadError(ValueError):
    """A payload that does not fit its sensor; the message says why."""


class FieldMissing(PayloadError):
    """The JSON payload has no such field (normal on topics that carry several kinds of message)."""


_P = ParamSpec("_P")
_T = TypeVar("_T")


def decoder(parse: Callable[_P, _T]) -> Callable[_P, _T]:
    """Whatever a decode raises is bad input, never a crash: the caller catches only PayloadError.

    The standard library raises more than it documents (a JSON integer of over 4,300 digits is
    a plain ValueError, deep nesting a RecursionError), so every payload decoder is wrapped.
    """

    @functools.wraps(parse)
    def decode(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return parse(*args, **kwargs)
        except PayloadError:
            raise
        except RecursionError:
            raise PayloadError("payload is nested too deeply") from None
        except Exception as err:
            raise PayloadError(f"payload could not be read ({type(err).__name__}: {str(err)[:80]})") from None

    return decode


def _reject_constant(name: str) -> Any:
    raise PayloadError(f"{name} is not a value")


# One decoder for every payload: json.loads with an argument builds a decoder (and its scanner) per call.
_json = json.JSONDecoder(parse_constant=_reject_constant)


def _decode(payload: bytes, max_payload: int) -> str:
    if len(payload) > max_payload:
        raise PayloadError(f"payload of {len(payload)} bytes is over max_payload ({max_payload})")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("payload is not UTF-8") from None


_JSON_SPACE = " \t\n\r"  # JSON's whitespace: not str.strip()'s (no-break space is not JSON's)


def _load_json(text: str) -> Any:
    """`json.loads(text)`, without `JSONDecoder.decode`'s two regular expressions (one reading's
    JSON is a few dozen bytes: the calls around the scanner cost more than the scan)."""
    if not text.strip():
        raise PayloadError("payload is empty")
    try:
        value, end = _json.raw_decode(text, len(text) - len(text.lstrip(_JSON_SPACE)))
    except RecursionError:
        raise PayloadError("JSON is nested too deeply") from None
    except json.JSONDecodeError as err:
        raise PayloadError(f"payload is not valid JSON ({err.msg} at char {err.pos})") from None
    if end != len(text):
        rest = text[end:].lstrip(_JSON_SPACE)
        if rest:
            raise PayloadError(f"payload is not valid JSON (Extra data at char {len(text) - len(rest)})")
    return value


# What a device sends as a number: ASCII digits, a sign, a fraction, an exponent. float() and
# int() take more (`1_000`, Arabic-Indic digits, `infinity`), which is text from a device.
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_NOT_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.ASCII | re.IGNORECASE)


def _plain(text: str) -> Value:
    stripped = text.strip()
    if not stripped:
        raise PayloadError("payload is empty")
    low = stripped.lower()
    if low in ("true", "false"):
        return low == "true"
    if _INTEGER.fullmatch(stripped):
        return int(stripped)  # not through float: 2**63 stays exact
    if _DECIMAL.fullmatch(stripped):
        number = float(stripped)
    elif _NOT_FINITE.fullmatch(stripped):
        raise PayloadError(f"{stripped} is not a value")
    else:
        return stripped
    if not math.isfinite(number):
        raise PayloadError(f"{stripped[:40]} is not a finite number")
    return number


def _field(doc: Any, field: str) -> Any:
    node = doc
    for part in field.split("."):
        if not isinstance(node, dict):
            raise PayloadError(f"field {field!r} not found (payload has no object at {part!r})")
        if part not in node:
            raise FieldMissing(f"field {field!r} not found")
        node = node[part]
    return node


def _scalar(raw: Any, field: str) -> Value:
    if isinstance(raw, bool | str):
        return raw
    if isinstance(raw, int | float):
        if isinstance(raw, float) and not math.isfinite(raw):
            raise PayloadError(f"field {field!r} is not a finite number")
        return raw
    kind = (
        "null" if raw is None else type(raw).__name__.replace("dict", "an object").replace("list", "a list")
    )
    raise PayloadError(f"field {field!r} is {kind}, not a value")


def _parse_value(payload: bytes, fmt: str, field: str, max_payload: int = 65536) -> Value:
    """The sensor value carried by a state-topic payload."""
    text = _decode(payload, max_payload)
    if fmt == "plain":
        return _plain(text)
    if fmt == "tasmota" and not field:
        # stat/<t>/POWER and friends carry the bare value.
        return _plain(text)
    return _scalar(_field(_load_json(text), field), field)


parse_value = decoder(_parse_value)


@decoder
def read_value(payload: bytes, sensor: Sensor, max_payload: int = 65536) -> Value:
    """The sensor's value in a state-topic payload, as its config shapes it (`shape`)."""
    return shape(_parse_value(payload, sensor.format, sensor.field, max_payload), sensor)  # one wrapper


def _text(value: Value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value).strip()


def shape(value: Value, sensor: Sensor) -> Value:
    """`cast`, `round`, then `payload_on`/`payload_off`, as Home Assistant's templates and binary
    sensors do (`{{ value_json.t | float | round(1) }}`; "ON" is on)."""
    if sensor.cast:
        number = value if isinstance(value, int | float) else _plain(str(value))
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise PayloadError(f"{_text(value)[:40]!r} is not a number")
        value = float(number) if sensor.cast == "float" else int(number)
    if sensor.round is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PayloadError(f"{_text(value)[:40]!r} is not a number to round")
        value = round(float(value), sensor.round)
    if sensor.payload_on or sensor.payload_off:
        text = _text(value).casefold()
        if sensor.payload_on and text == sensor.payload_on.strip().casefold():
            return True
        if sensor.payload_off and text == sensor.payload_off.strip().casefold():
            return False
        raise PayloadError(
            f"{_text(value)[:40]!r} is neither payload_on {sensor.payload_on!r} "
            f"nor payload_off {sensor.payload_off!r}"
        )
    return value


_ONLINE = {"online": True, "offline": False, "true": True, "false": False, "1": True, "0": False}


@decoder
def parse_availability(payload: bytes, max_payload: int = 65536, online: str = "", offline: str = "") -> bool:
    """`online`/`offline` (any case), or `{"state": "online"}` as Zigbee2MQTT sends it; also the
    sensor's own `online` and `offline` texts (Home Assistant's payload_available)."""
    text = _decode(payload, max_payload).strip()
    if online and text.casefold() == online.strip().casefold():
        return True
    if offline and text.casefold() == offline.strip().casefold():
        return False
    if text.startswith("{"):
        state = _field(_load_json(text), "state")
        text = state if isinstance(state, str) else ""
    try:
        return _ONLINE[text.lower()]
    except KeyError:
        raise PayloadError(f"availability {text[:40]!r} is neither online nor offline") from None


def compare_equal(value: Value, expected: Value) -> bool:
    """`equals`: text compares case-insensitively; booleans never equal numbers."""
    if isinstance(value, bool) or isinstance(expected, bool):
        if isinstance(value, bool) and isinstance(expected, bool):
            return value == expected
        # "ON"/"OFF" sensors compared with true/false in the config.
        if isinstance(value, str) and isinstance(expected, bool):
            return value.strip().lower() in (("on", "true") if expected else ("off", "false"))
        if isinstance(value, bool) and isinstance(expected, str):
            return expected.strip().lower() in (("on", "true") if value else ("off", "false"))
        return False
    if isinstance(value, str) and isinstance(expected, str):
        return value.casefold() == expected.casefold()
    if isinstance(value, int | float) and isinstance(expected, int | float):
        return value == expected
    return False
