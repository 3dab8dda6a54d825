"""Discovery's parsers and the running config they make (SPEC §11), without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import Config, ConfigError, parse_config
from gateway.config.sensors import Sensor
from gateway.engine.discovery import (
    DiscoveredSensors,
    DiscoveryError,
    default_rules,
    parse_zigbee2mqtt,
    with_discovered,
)
from gateway.engine.display import display
from gateway.engine.formats import PayloadError, parse_availability, read_value
from gateway.engine.homeassistant import Unsupported, parse_homeassistant, parse_template
from gateway.reload import merge
from tests.discovery_messages import (
    COORDINATOR_1X,
    COORDINATOR_2X,
    ESPHOME_LEAK,
    ESPHOME_TEMPERATURE,
    FRONT_DOOR_2X,
    INTERVIEWING_2X,
    LEAK_1X,
    LEAK_2X,
    PLUG_2X,
    SHELLY_HUMIDITY,
    TASMOTA_RELAY,
    TASMOTA_TEMPERATURE,
    THERMOSTAT_2X,
    Z2M_HA_LEAK,
    payload,
)

MAX = 4 * 1024 * 1024


def z2m(*devices: Any) -> dict[str, Sensor]:
    sensors, problems = parse_zigbee2mqtt(payload(list(devices)), "zigbee2mqtt", "zigbee", MAX)
    assert problems == []
    return {s.id: s for s in sensors}


def ha(message: tuple[str, dict[str, Any]]) -> Sensor:
    sensor = parse_homeassistant(message[0], payload(message[1]), "homeassistant", MAX)
    assert sensor is not None
    return sensor


def test_zigbee2mqtt_2x_devices_give_their_properties_of_interest() -> None:
    found = z2m(COORDINATOR_2X, LEAK_2X, PLUG_2X, INTERVIEWING_2X)
    assert sorted(found) == [
        "Bathroom_leak.battery",
        "Bathroom_leak.battery_low",
        "Bathroom_leak.water_leak",
        "Kitchen_plug.energy",
        "Kitchen_plug.power",
    ]
    leak = found["Bathroom_leak.water_leak"]
    assert (leak.topic, leak.format, leak.field) == ("zigbee2mqtt/Bathroom leak", "zigbee2mqtt", "water_leak")
    assert leak.availability_topic == "zigbee2mqtt/Bathroom leak/availability"
    assert (leak.zone, leak.device_class, leak.name) == ("zigbee", "moisture", "Bathroom leak water leak")
    assert (found["Bathroom_leak.battery"].unit, found["Bathroom_leak.battery"].device_class) == (
        "%",
        "battery",
    )
    assert found["Bathroom_leak.battery_low"].device_class == "battery"
    assert (found["Kitchen_plug.power"].unit, found["Kitchen_plug.energy"].unit) == ("W", "kWh")
    assert found["Kitchen_plug.power"].topic == "zigbee2mqtt/Kitchen/plug"
    assert display(True, leak) == "wet"


def test_zigbee2mqtt_1x_devices_read_the_same() -> None:
    found = z2m(COORDINATOR_1X, LEAK_1X)
    assert sorted(found) == ["Bathroom_leak.battery", "Bathroom_leak.water_leak"]
    assert found["Bathroom_leak.water_leak"].device_class == "moisture"


def test_zigbee2mqtt_features_of_specific_and_composite_exposes() -> None:
    found = z2m(THERMOSTAT_2X)
    # A composite's features sit under its property in the state; ON/OFF binaries read as booleans.
    assert sorted(found) == ["Hall_thermostat.sensors.humidity", "Hall_thermostat.tamper"]
    assert found["Hall_thermostat.sensors.humidity"].field == "sensors.humidity"
    tamper = found["Hall_thermostat.tamper"]
    assert read_value(b'{"tamper":"ON"}', tamper) is True
    assert read_value(b'{"tamper":"OFF"}', tamper) is False


def test_zigbee2mqtt_door_reads_open_and_closed() -> None:
    door = z2m(FRONT_DOOR_2X)["front_door.contact"]
    assert door.device_class == "door"
    assert display(read_value(b'{"contact":false}', door), door) == "open"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b'{"devices": []}', "not a list"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_zigbee2mqtt_malformed_lists_are_refused(message: bytes, error: str) -> None:
    with pytest.raises(PayloadError, match=error):
        parse_zigbee2mqtt(message, "zigbee2mqtt", "zigbee", MAX)


def test_zigbee2mqtt_bad_devices_are_skipped_and_said() -> None:
    bad_name = {**LEAK_2X, "friendly_name": "leak#1"}
    devices = [
        7,
        {"type": "EndDevice", "definition": {}},
        bad_name,
        {**LEAK_2X, "definition": {"exposes": 3}},
        PLUG_2X,
    ]
    sensors, problems = parse_zigbee2mqtt(payload(devices), "zigbee2mqtt", "zigbee", MAX)
    assert sorted(s.id for s in sensors) == ["Kitchen_plug.energy", "Kitchen_plug.power"]
    assert len(problems) == 6  # the number, the one without a name, the three of leak#1, the bad exposes
    assert any("without + or #" in p for p in problems)


def test_discovery_payloads_are_held_to_their_own_limit() -> None:
    big = payload([LEAK_2X] * 200)
    assert len(big) > 65536
    assert len(parse_zigbee2mqtt(big, "zigbee2mqtt", "zigbee", MAX)[0]) == 3
    with pytest.raises(DiscoveryError, match=r"over discovery\.max_payload"):
        parse_zigbee2mqtt(big, "zigbee2mqtt", "zigbee", 65536)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (None, ("plain", "", "", None)),
        ("{{ value }}", ("plain", "", "", None)),
        ("{{value_json.a.b}}", ("json", "a.b", "", None)),
        ("{{ value_json['a'] }}", ("json", "a", "", None)),
        ('{{ value_json["ENERGY"]["Power"] }}', ("json", "ENERGY.Power", "", None)),
        ("{{value_json['AM2301'].Temperature}}", ("json", "AM2301.Temperature", "", None)),
        ("{{ value | float }}", ("plain", "", "float", None)),
        ("{{ value_json.t | int }}", ("json", "t", "int", None)),
        ("{{ value_json.t | float | round(1) }}", ("json", "t", "float", 1)),
        ("{{ value_json.t | float(0) | round(2) }}", ("json", "t", "float", 2)),
    ],
)
def test_template_forms(template: Any, expected: tuple[Any, ...]) -> None:
    assert parse_template(template) == expected


@pytest.mark.parametrize(
    "template",
    [
        "{{ value_json }}",
        "{{ value.a }}",
        "{{ value_json.a | upper }}",
        "{% if value_json.a %}on{% endif %}",
        "{{ value_json['a.b'] }}",
        "{{ value_json.a | round('x') }}",
        "{{ states('sensor.x') }}",
        42,
    ],
)
def test_other_templates_are_refused(template: Any) -> None:
    with pytest.raises(DiscoveryError):
        parse_template(template)


def test_tasmota_sensor() -> None:
    sensor = ha(TASMOTA_TEMPERATURE)
    assert sensor.id == "A1B2C3_AM2301_Temperature"
    assert (sensor.topic, sensor.format, sensor.field) == (
        "tele/tasmota_A1B2C3/SENSOR",
        "json",
        "AM2301.Temperature",
    )
    assert (sensor.unit, sensor.device_class, sensor.zone) == ("°C", "temperature", "devices")
    assert sensor.availability_topic == "tele/tasmota_A1B2C3/LWT"
    value = read_value(
        b'{"Time":"2024-01-01T10:00:00","AM2301":{"Temperature":21.4,"Humidity":40.1}}', sensor
    )
    assert display(value, sensor) == "21.4 °C"
    assert (
        parse_availability(b"Offline", 100, sensor.payload_available, sensor.payload_not_available) is False
    )


def test_esphome_sensor_and_binary_sensor() -> None:
    temperature = ha(ESPHOME_TEMPERATURE)
    assert (temperature.id, temperature.name, temperature.zone) == (
        "ESPsensorlivingroom_temperature",
        "livingroom Temperature",
        "Living_room",
    )
    assert (temperature.format, temperature.topic) == (
        "plain",
        "livingroom/sensor/livingroom_temperature/state",
    )
    assert display(read_value(b"21.50", temperature), temperature) == "21.5 °C"
    leak = ha(ESPHOME_LEAK)
    assert (leak.device_class, leak.payload_on, leak.payload_off) == ("moisture", "ON", "OFF")
    assert read_value(b"ON", leak) is True and display(read_value(b"OFF", leak), leak) == "dry"
    with pytest.raises(PayloadError, match="neither payload_on"):
        read_value(b"maybe", leak)


def test_shelly_base_topic_and_filters() -> None:
    humidity = ha(SHELLY_HUMIDITY)
    assert humidity.topic == "shellyplusht-08b61fcd1a2b/status/humidity:0"
    assert humidity.availability_topic == "shellyplusht-08b61fcd1a2b/online"
    assert read_value(b'{"id":0,"rh":55.37}', humidity) == 55.4
    assert (
        parse_availability(b"false", 100, humidity.payload_available, humidity.payload_not_available) is False
    )
    with pytest.raises(PayloadError, match="not a number"):
        read_value(b'{"id":0,"rh":"n/a"}', humidity)


def test_zigbee2mqtt_as_home_assistant_sees_it() -> None:
    leak = ha(Z2M_HA_LEAK)
    assert leak.id == "0x00158d0004a1b2c3_water_leak_zigbee2mqtt"
    assert (leak.field, leak.device_class) == ("water_leak", "moisture")
    # The availability list: the device's own topic, not the bridge's.
    assert leak.availability_topic == "zigbee2mqtt/Bathroom leak/availability"
    assert read_value(b'{"water_leak":true,"battery":90}', leak) is True


def test_id_from_topic_without_unique_id() -> None:
    topic, config = ESPHOME_TEMPERATURE
    config = {k: v for k, v in config.items() if k != "uniq_id"}
    assert ha((topic, config)).id == "livingroom.livingroom_temperature"
    assert ha(("homeassistant/sensor/room temp/config", {"stat_t": "a/b"})).id == "room_temp"


def test_empty_config_removes_and_other_components_are_not_read() -> None:
    assert parse_homeassistant(TASMOTA_TEMPERATURE[0], b"", "homeassistant", MAX) is None
    with pytest.raises(Unsupported):
        parse_homeassistant(TASMOTA_RELAY[0], payload(TASMOTA_RELAY[1]), "homeassistant", MAX)


@pytest.mark.parametrize(
    ("topic", "message", "error"),
    [
        ("homeassistant/sensor/x/config", b"[1]", "not an object"),
        ("homeassistant/sensor/x/config", b"{", "not valid JSON"),
        ("homeassistant/sensor/x/config", b'{"name":"x"}', "no state_topic"),
        ("homeassistant/sensor/x/config", b'{"stat_t":"a/+"}', "without \\+ or #"),
        ("homeassistant/sensor/x/config", b'{"stat_t":"a","unit_of_meas":"' + b"u" * 40 + b'"}', "unit"),
        ("homeassistant/sensor/x/config", b'{"stat_t":"a","val_tpl":"{{ value_json }}"}', "whole JSON"),
        ("homeassistant/sensor/a/b/c/config", b'{"stat_t":"a"}', "not <prefix>"),
    ],
)
def test_malformed_configs_are_refused(topic: str, message: bytes, error: str) -> None:
    with pytest.raises(PayloadError, match=error):
        parse_homeassistant(topic, message, "homeassistant", MAX)


def config(extra: str = "") -> Config:
    text = """
[discovery]
zigbee2mqtt = "zigbee2mqtt"
homeassistant = "homeassistant"
default_rules = true

[[sensors]]
id = "front-door"
topic = "zigbee2mqtt/front_door"
format = "zigbee2mqtt"
field = "contact"

[[rules]]
id = "leak-siren"
sensor = "Bathroom_leak.water_leak"
when = { equals = true }
"""
    import tomllib

    return parse_config(tomllib.loads(text + extra), {}, "test")


def test_running_config_adds_discovered_sensors_and_their_rules() -> None:
    found = DiscoveredSensors()
    sensors, _ = parse_zigbee2mqtt(
        payload([COORDINATOR_2X, LEAK_2X, FRONT_DOOR_2X]), "zigbee2mqtt", "zigbee", MAX
    )
    assert found.set_zigbee(sensors) and not found.set_zigbee(list(sensors))
    # Zigbee2MQTT's own Home Assistant configs are left out while its list is read.
    assert not found.set_config(Z2M_HA_LEAK[0], ha(Z2M_HA_LEAK), "zigbee2mqtt")
    assert found.set_config(Z2M_HA_LEAK[0], ha(Z2M_HA_LEAK))
    assert found.set_config(ESPHOME_LEAK[0], ha(ESPHOME_LEAK))
    assert {"Bathroom_leak.water_leak", "ESPbinary_sensorleak"} <= found.ids
    running = with_discovered(config(), found.sensors)
    ids = [s.id for s in running.sensors]
    # The configured front door wins over the discovered one on its topic and field; Zigbee2MQTT's
    # own Home Assistant config of the leak sensor reads what the bridge list already gave.
    assert "front_door.contact" not in ids and "0x00158d0004a1b2c3_water_leak_zigbee2mqtt" not in ids
    assert ids[0] == "front-door" and "front_door.battery" in ids and "ESPbinary_sensorleak" in ids
    rules = {r.id: r for r in running.rules}
    assert rules["leak-siren"].sensor == "Bathroom_leak.water_leak"
    assert rules["Bathroom_leak.water_leak.detected"].severity == "critical"
    assert rules["Bathroom_leak.battery.low"].when.below == 10
    assert rules["Bathroom_leak.battery_low.low"].when.equals is True
    assert rules["ESPbinary_sensorleak.detected"].message == "{sensor.name}: water leak"
    # One offline rule per device (availability topic), none for the configured front door.
    offline = sorted(r.sensor for r in running.rules if r.when.offline)
    assert offline == ["Bathroom_leak.water_leak", "ESPbinary_sensorleak", "front_door.battery"]
    assert found.set_config(ESPHOME_LEAK[0], None) and not found.set_config(ESPHOME_LEAK[0], None)
    assert "ESPbinary_sensorleak" not in {s.id for s in with_discovered(config(), found.sensors).sensors}
    assert "ESPbinary_sensorleak" not in found.ids
    # Another process's list, as it is (split mode).
    assert found.mirror([ha(ESPHOME_LEAK)]) and found.ids == {"ESPbinary_sensorleak"}
    assert not found.mirror([ha(ESPHOME_LEAK)])


def test_default_rules_only_when_asked() -> None:
    sensors, _ = parse_zigbee2mqtt(payload([LEAK_2X]), "zigbee2mqtt", "zigbee", MAX)
    plain = config().model_copy(
        update={"discovery": config().discovery.model_copy(update={"default_rules": False})}
    )
    assert [r.id for r in with_discovered(plain, sensors).rules] == ["leak-siren"]
    assert len(default_rules(sensors)) == 4


def test_discovery_config_section() -> None:
    assert Config().discovery.topics == ()
    assert config().discovery.topics == (
        "zigbee2mqtt/bridge/devices",
        "homeassistant/+/+/config",
        "homeassistant/+/+/+/config",
    )
    assert config().discovery.max_payload == 4 * 1024 * 1024
    with pytest.raises(ConfigError, match=r"discovery\.zigbee2mqtt"):
        parse_config({"discovery": {"zigbee2mqtt": "z/#"}}, {}, "t")
    with pytest.raises(ConfigError, match=r"discovery\.zone"):
        parse_config({"discovery": {"zone": "a b"}}, {}, "t")
    # Without discovery, a rule must name a configured sensor.
    with pytest.raises(ConfigError, match="no sensor with id"):
        parse_config({"rules": [{"id": "r", "sensor": "nope", "when": {"offline": True}}]}, {}, "t")
    # A reload keeps the discovery of the start and says it needs a restart.
    changed = config().model_copy(update={"discovery": config().discovery.model_copy(update={"zone": "z"})})
    merged, restart = merge(config(), changed)
    assert merged.discovery.zone == "zigbee" and restart == ["discovery.zone"]


def test_payload_mapping_and_casts_on_configured_sensors() -> None:
    relay = Sensor(id="r", topic="t", format="plain", payload_on="on", payload_off="off")
    assert read_value(b"ON", relay) is True
    counter = Sensor(id="c", topic="t", format="json", field="n", cast="int")
    assert read_value(b'{"n":"21.7"}', counter) == 21
    assert (
        json.dumps(read_value(b'{"n":3}', Sensor(id="f", topic="t", format="json", field="n", cast="float")))
        == "3.0"
    )


def test_discovery_topics_are_not_shared_in_a_shared_group() -> None:
    from protocols.mqtt.client import BrokerAddress
    from protocols.mqtt.server import MqttServer, MqttSettings

    topics = config().discovery.topics
    settings = MqttSettings(BrokerAddress("127.0.0.1", 1), "c", "5", shared_group="edge", not_shared=topics)
    server = MqttServer(settings, lambda *a: None, [])
    # Retained messages are not sent on shared subscriptions, and each process needs every device.
    assert [server._shared(t) for t in topics] == list(topics)
    assert server._shared("zigbee2mqtt/Bathroom leak") == "$share/edge/zigbee2mqtt/Bathroom leak"


def test_abbreviated_availability_list_and_expire_after() -> None:
    sensor = ha(
        (
            "homeassistant/binary_sensor/garage/door/config",
            {
                "~": "garage/door",
                "stat_t": "~/state",
                "avty": [{"t": "garage/bridge"}, {"t": "~/avail", "pl_avail": "up", "pl_not_avail": "down"}],
                "exp_aft": 600,
                "dev_cla": "garage_door",
                "pl_on": "open",
                "pl_off": "shut",
                "dev": {"name": "Garage", "sa": "Outside"},
            },
        )
    )
    assert (sensor.id, sensor.name, sensor.zone) == ("garage.door", "Garage", "Outside")
    assert (sensor.topic, sensor.availability_topic) == ("garage/door/state", "garage/door/avail")
    assert parse_availability(b"down", 100, sensor.payload_available, sensor.payload_not_available) is False
    assert sensor.expire_after == 600.0
    assert display(read_value(b"open", sensor), sensor) == "open"
    assert display(read_value(b"SHUT", sensor), sensor) == "closed"
