"""Values as people read them (gateway.engine.display, SPEC §11): words per device class, units, labels."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, Sensor, parse_config
from gateway.engine.display import display, label_key
from gateway.engine.templates import render_message


def sensor(**keys: Any) -> Sensor:
    entry = {"id": "s", "topic": "t/s", "format": "plain", **keys}
    return parse_config({"sensors": [entry]}, {}, "test").sensors[0]


@pytest.mark.parametrize(
    ("device_class", "on", "off"),
    [
        ("door", "open", "closed"),
        ("window", "open", "closed"),
        ("motion", "detected", "clear"),
        ("occupancy", "detected", "clear"),
        ("moisture", "wet", "dry"),
        ("smoke", "detected", "clear"),
        ("gas", "detected", "clear"),
        ("carbon_monoxide", "detected", "clear"),
        ("battery", "low", "normal"),
        ("tamper", "tampered", "clear"),
    ],
)
def test_a_boolean_of_a_known_class_reads_in_words(device_class: str, on: str, off: str) -> None:
    s = sensor(device_class=device_class)
    assert (display(True, s), display(False, s)) == (on, off)


def test_zigbee2mqtt_contact_is_the_other_way_round() -> None:
    door = sensor(format="zigbee2mqtt", field="contact", device_class="door")
    assert (display(False, door), display(True, door)) == ("open", "closed")
    nested = sensor(format="json", field="state.contact", device_class="window")
    assert display(True, nested) == "closed"


def test_numbers_carry_their_unit_without_float_noise() -> None:
    freezer = sensor(unit="°C", device_class="temperature")
    assert display(-9.5, freezer) == "-9.5 °C"
    assert display(21.0, freezer) == "21 °C"
    assert display(0.1 + 0.2, freezer) == "0.3 °C"
    assert display(1013.25, sensor(unit="hPa")) == "1013.2 hPa"
    assert display(-0.001, freezer) == "0 °C"
    assert display(7, sensor()) == "7"
    assert display(float("nan"), sensor(unit="W")) == "nan W"


def test_labels_win_and_are_found_whatever_the_case() -> None:
    plug = sensor(labels={"ON": "running", "false": "stopped", "3": "three"}, device_class="door")
    assert display("on", plug) == "running"
    assert display(False, plug) == "stopped"
    assert display(True, plug) == "open"  # no label for it: the class's word
    assert display(3, plug) == "three"
    assert display("Idle", plug) == "Idle"
    assert label_key(True) == "true" and label_key(3.0) == "3" and label_key(" ON ") == "on"


def test_no_value_yet_and_unknown_classes() -> None:
    assert display(None, sensor(unit="°C")) == "unknown"
    assert (display(True, sensor()), display(False, sensor(device_class="sparkle"))) == ("on", "off")


def test_templates_take_display() -> None:
    config = parse_config(
        {
            "sensors": [
                {
                    "id": "door",
                    "topic": "z/door",
                    "format": "zigbee2mqtt",
                    "field": "contact",
                    "device_class": "door",
                }
            ],
            "rules": [{"id": "r", "sensor": "door", "when": {"equals": False}}],
        },
        {},
        "test",
    )
    text = render_message(
        "{sensor.name} is {display} ({value})", config.rules[0], config.sensors[0], False, "home"
    )
    assert text == "door is open (false)"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"device_class": "Door"}, "device_class"),
        ({"unit": "x" * 17}, "unit"),
        ({"labels": {"on": ""}}, "labels"),
    ],
)
def test_bad_presentation_keys_are_named(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        sensor(**keys)
    assert message in str(info.value)
