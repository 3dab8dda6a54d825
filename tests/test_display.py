"""Values as people read them (gateway.engine.display, SPEC §11): words per device class, units, labels."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, Sensor, parse_config
from gateway.engine.display import display, label_key
from gateway.engine.templates import render_message
from tests.conftest import GatewayFactory, alert_event, http_get, publish, recv_json, recv_until, ws_connect


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


FREEZER = """
[[sensors]]
id = "freezer"
name = "Freezer"
zone = "kitchen"
topic = "sensors/freezer"
format = "plain"
unit = "°C"
device_class = "temperature"

[[rules]]
id = "freezer-warm"
sensor = "freezer"
when = { above = -10 }
message = "{sensor.name} at {display}"
"""


async def test_what_people_see_on_the_websocket_and_the_api(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(extra=FREEZER)
    ws = await ws_connect(gw)
    hello = await recv_json(ws)
    door = next(s for s in hello["sensors"] if s["id"] == "front-door")
    # A Zigbee2MQTT contact with no presentation keys: a door, in words.
    assert (door["device_class"], door["display"]) == ("door", "unknown")
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":false}')
    raised = (await recv_until(ws, alert_event("raised")))["alert"]
    assert (raised["value"], raised["display"]) == (False, "open")
    tile = await recv_until(ws, lambda m: m.get("type") == "sensor" and m["sensor"]["id"] == "front-door")
    assert tile["sensor"]["display"] == "open"
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":true}')
    cleared = (await recv_until(ws, alert_event("cleared")))["alert"]
    assert cleared["display"] == "closed"
    await publish(gw.mqtt_port, "sensors/freezer", "-9.5")
    warm = (await recv_until(ws, alert_event("raised")))["alert"]
    assert (warm["message"], warm["display"]) == ("Freezer at -9.5 °C", "-9.5 °C")
    await ws.close()
    status, body = http_get(f"{gw.url}/api/sensors", "ops-secret-token")
    assert status == 200
    freezer = next(s for s in body["sensors"] if s["id"] == "freezer")
    assert (freezer["unit"], freezer["device_class"], freezer["display"]) == ("°C", "temperature", "-9.5 °C")
    assert http_get(f"{gw.url}/api/sensors")[0] == 401
