"""How a value reads to a person (SPEC §11): a sensor's `labels`, its device class's words, its unit.

Pure. `display(value, sensor)` is what the dashboard, Telegram, `/api/sensors` and templates
(`{display}`) show, never a raw `true`/`false`.
"""

from __future__ import annotations

import math
from typing import Protocol

from gateway.engine.formats import Value

__all__ = ["BINARY_WORDS", "Presented", "display", "label_key", "plain"]

# (on, off) in Home Assistant's sense of "on" for each binary device class.
BINARY_WORDS: dict[str, tuple[str, str]] = {
    "door": ("open", "closed"),
    "window": ("open", "closed"),
    "garage_door": ("open", "closed"),
    "opening": ("open", "closed"),
    "motion": ("detected", "clear"),
    "occupancy": ("detected", "clear"),
    "presence": ("home", "away"),
    "moisture": ("wet", "dry"),
    "smoke": ("detected", "clear"),
    "gas": ("detected", "clear"),
    "carbon_monoxide": ("detected", "clear"),
    "vibration": ("detected", "clear"),
    "sound": ("detected", "clear"),
    "tamper": ("tampered", "clear"),
    "battery": ("low", "normal"),
    "problem": ("problem", "OK"),
    "safety": ("unsafe", "safe"),
    "lock": ("unlocked", "locked"),
    "plug": ("plugged in", "unplugged"),
    "power": ("on", "off"),
    "running": ("running", "not running"),
    "connectivity": ("connected", "disconnected"),
    "light": ("light", "dark"),
    "cold": ("cold", "normal"),
    "heat": ("hot", "normal"),
}
UNKNOWN = "unknown"


class Presented(Protocol):
    """What of a sensor its display needs (gateway.config.Sensor has it)."""

    @property
    def field(self) -> str: ...
    @property
    def unit(self) -> str: ...
    @property
    def device_class(self) -> str: ...
    @property
    def labels(self) -> dict[str, str]: ...


def label_key(value: Value) -> str:
    """The key a value is looked up by in `labels`: `true`/`false`, a number's text, text in lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    return str(value).strip().lower()


def plain(value: Value | None) -> str:
    """A value with no sensor to present it (an alert from before displays were kept)."""
    return UNKNOWN if value is None else label_key(value) if isinstance(value, bool) else str(value)


def display(value: Value | None, sensor: Presented) -> str:
    """The value as a person reads it: "open", "21.5 °C", "wet"."""
    if value is None:
        return UNKNOWN
    if sensor.labels:
        label = sensor.labels.get(label_key(value))
        if label is not None:
            return label
    if isinstance(value, bool):
        words = BINARY_WORDS.get(sensor.device_class)
        if words is None:
            return "on" if value else "off"
        on = value
        if sensor.field.rsplit(".", 1)[-1] == "contact":
            on = not value  # Zigbee2MQTT: contact true = the contact is made = closed
        return words[0] if on else words[1]
    if isinstance(value, int | float):
        text = _number(value)
        return f"{text} {sensor.unit}" if sensor.unit else text
    return str(value)


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    # At most two decimals (one from 100 on), no trailing zeros: 21.5, 0.25, 1013.2, 3.
    digits = 1 if abs(value) >= 100 else 2
    text = f"{round(value, digits):.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
