"""Discovery messages in the shapes Zigbee2MQTT (1.x, 2.x), Tasmota, ESPHome and Shelly publish them."""

from __future__ import annotations

import json
from typing import Any

COORDINATOR_2X: dict[str, Any] = {
    "ieee_address": "0x00124b0024c1a2b3",
    "type": "Coordinator",
    "network_address": 0,
    "supported": True,
    "disabled": False,
    "friendly_name": "Coordinator",
    "definition": None,
    "endpoints": {
        "1": {"bindings": [], "configured_reportings": [], "clusters": {"input": [], "output": []}}
    },
    "interview_state": "SUCCESSFUL",
}

# Aqara SJCGQ11LM as Zigbee2MQTT 2.x lists it.
LEAK_2X: dict[str, Any] = {
    "ieee_address": "0x00158d0004a1b2c3",
    "type": "EndDevice",
    "network_address": 41236,
    "supported": True,
    "disabled": False,
    "friendly_name": "Bathroom leak",
    "description": None,
    "power_source": "Battery",
    "model_id": "lumi.sensor_wleak.aq1",
    "manufacturer": "LUMI",
    "interview_state": "SUCCESSFUL",
    "software_build_id": None,
    "date_code": None,
    "definition": {
        "model": "SJCGQ11LM",
        "vendor": "Aqara",
        "description": "Water leak sensor",
        "source": "native",
        "supports_ota": False,
        "options": [],
        "exposes": [
            {
                "type": "binary",
                "name": "water_leak",
                "label": "Water leak",
                "property": "water_leak",
                "access": 1,
                "value_on": True,
                "value_off": False,
                "description": "Indicates whether the device detected a water leak",
            },
            {
                "type": "binary",
                "name": "battery_low",
                "label": "Battery low",
                "property": "battery_low",
                "access": 1,
                "value_on": True,
                "value_off": False,
                "category": "diagnostic",
            },
            {
                "type": "numeric",
                "name": "battery",
                "label": "Battery",
                "property": "battery",
                "access": 1,
                "unit": "%",
                "value_min": 0,
                "value_max": 100,
                "category": "diagnostic",
            },
            {
                "type": "numeric",
                "name": "voltage",
                "label": "Voltage",
                "property": "voltage",
                "access": 1,
                "unit": "mV",
                "category": "diagnostic",
            },
            {
                "type": "numeric",
                "name": "device_temperature",
                "label": "Temperature",
                "property": "device_temperature",
                "access": 1,
                "unit": "°C",
            },
        ],
    },
    "endpoints": {
        "1": {"bindings": [], "configured_reportings": [], "clusters": {"input": [], "output": []}}
    },
}

# Aqara MCCGQ11LM on the configured front door's topic (the configured sensor wins).
FRONT_DOOR_2X: dict[str, Any] = {
    **LEAK_2X,
    "ieee_address": "0x00158d0001d2e3f4",
    "friendly_name": "front_door",
    "model_id": "lumi.sensor_magnet.aq2",
    "definition": {
        "model": "MCCGQ11LM",
        "vendor": "Aqara",
        "description": "Door and window sensor",
        "source": "native",
        "supports_ota": False,
        "options": [],
        "exposes": [
            {
                "type": "binary",
                "name": "contact",
                "label": "Contact",
                "property": "contact",
                "access": 1,
                "value_on": False,
                "value_off": True,
                "description": "Indicates if the contact is closed (= true) or open (= false)",
            },
            {"type": "numeric", "name": "battery", "property": "battery", "access": 1, "unit": "%"},
        ],
    },
}

# A smart plug: its on/off in a `switch` expose's features (not read), power and energy beside it.
PLUG_2X: dict[str, Any] = {
    **LEAK_2X,
    "ieee_address": "0xa4c138aabbccdd01",
    "type": "Router",
    "friendly_name": "Kitchen/plug",
    "power_source": "Mains (single phase)",
    "definition": {
        "model": "TS011F_plug_1",
        "vendor": "Tuya",
        "description": "Smart plug (with power monitoring)",
        "source": "native",
        "supports_ota": True,
        "options": [],
        "exposes": [
            {
                "type": "switch",
                "features": [
                    {
                        "type": "binary",
                        "name": "state",
                        "label": "State",
                        "property": "state",
                        "access": 7,
                        "value_on": "ON",
                        "value_off": "OFF",
                        "value_toggle": "TOGGLE",
                    }
                ],
            },
            {
                "type": "numeric",
                "name": "power",
                "label": "Power",
                "property": "power",
                "access": 5,
                "unit": "W",
            },
            {
                "type": "numeric",
                "name": "energy",
                "label": "Energy",
                "property": "energy",
                "access": 5,
                "unit": "kWh",
            },
        ],
    },
}

# A thermostat: its temperature and tamper as features of a `climate` expose.
THERMOSTAT_2X: dict[str, Any] = {
    **LEAK_2X,
    "ieee_address": "0x842e14fffe0a0b0c",
    "friendly_name": "Hall thermostat",
    "definition": {
        "model": "TS0601_thermostat",
        "vendor": "Tuya",
        "description": "Radiator valve",
        "source": "native",
        "supports_ota": False,
        "options": [],
        "exposes": [
            {
                "type": "climate",
                "features": [
                    {
                        "type": "numeric",
                        "name": "local_temperature",
                        "property": "local_temperature",
                        "access": 5,
                        "unit": "°C",
                    },
                    {
                        "type": "numeric",
                        "name": "occupied_heating_setpoint",
                        "property": "occupied_heating_setpoint",
                        "access": 7,
                        "unit": "°C",
                    },
                ],
            },
            {
                "type": "composite",
                "name": "sensors",
                "property": "sensors",
                "access": 1,
                "features": [
                    {"type": "numeric", "name": "humidity", "property": "humidity", "access": 1, "unit": "%"}
                ],
            },
            {
                "type": "binary",
                "name": "tamper",
                "property": "tamper",
                "access": 1,
                "value_on": "ON",
                "value_off": "OFF",
            },
        ],
    },
}

INTERVIEWING_2X: dict[str, Any] = {
    **LEAK_2X,
    "ieee_address": "0x00158d000fffffff",
    "friendly_name": "0x00158d000fffffff",
    "definition": None,
    "supported": False,
    "interview_state": "IN_PROGRESS",
}

# Zigbee2MQTT 1.x: interview flags instead of interview_state, no labels, no source.
LEAK_1X: dict[str, Any] = {
    "ieee_address": "0x00158d0004a1b2c3",
    "type": "EndDevice",
    "network_address": 41236,
    "supported": True,
    "friendly_name": "Bathroom leak",
    "power_source": "Battery",
    "model_id": "lumi.sensor_wleak.aq1",
    "manufacturer": "LUMI",
    "interviewing": False,
    "interview_completed": True,
    "software_build_id": None,
    "date_code": None,
    "definition": {
        "model": "SJCGQ11LM",
        "vendor": "Xiaomi",
        "description": "Aqara water leak sensor",
        "supports_ota": False,
        "exposes": [
            {
                "access": 1,
                "description": "Remaining battery in %",
                "name": "battery",
                "property": "battery",
                "type": "numeric",
                "unit": "%",
                "value_max": 100,
                "value_min": 0,
            },
            {
                "access": 1,
                "description": "Indicates whether the device detected a water leak",
                "name": "water_leak",
                "property": "water_leak",
                "type": "binary",
                "value_off": False,
                "value_on": True,
            },
            {
                "access": 1,
                "description": "Link quality (signal strength)",
                "name": "linkquality",
                "property": "linkquality",
                "type": "numeric",
                "unit": "lqi",
                "value_max": 255,
                "value_min": 0,
            },
        ],
    },
    "endpoints": {
        "1": {"bindings": [], "configured_reportings": [], "clusters": {"input": [], "output": []}}
    },
}
COORDINATOR_1X: dict[str, Any] = {
    "ieee_address": "0x00124b0024c1a2b3",
    "type": "Coordinator",
    "network_address": 0,
    "supported": False,
    "friendly_name": "Coordinator",
    "definition": None,
    "interviewing": False,
    "interview_completed": True,
    "endpoints": {},
}

# Tasmota (SetOption19 1): abbreviated keys, a template into the sensor's JSON.
TASMOTA_TEMPERATURE = (
    "homeassistant/sensor/A1B2C3_AM2301_Temperature/config",
    {
        "name": "Tasmota AM2301 Temperature",
        "stat_t": "tele/tasmota_A1B2C3/SENSOR",
        "avty_t": "tele/tasmota_A1B2C3/LWT",
        "pl_avail": "Online",
        "pl_not_avail": "Offline",
        "uniq_id": "A1B2C3_AM2301_Temperature",
        "dev": {"ids": ["A1B2C3"]},
        "unit_of_meas": "°C",
        "dev_cla": "temperature",
        "frc_upd": True,
        "val_tpl": "{{value_json['AM2301'].Temperature}}",
    },
)

# ESPHome: plain state topics, a node level in the topic, the device's suggested area.
ESPHOME_TEMPERATURE = (
    "homeassistant/sensor/livingroom/livingroom_temperature/config",
    {
        "dev_cla": "temperature",
        "unit_of_meas": "°C",
        "stat_cla": "measurement",
        "name": "Temperature",
        "stat_t": "livingroom/sensor/livingroom_temperature/state",
        "avty_t": "livingroom/status",
        "uniq_id": "ESPsensorlivingroom_temperature",
        "dev": {
            "ids": "a4cf12abcdef",
            "name": "livingroom",
            "sw": "esphome v2024.6.1 Jun 20 2024, 10:00:00",
            "mdl": "esp32dev",
            "mf": "espressif",
            "sa": "Living room",
        },
    },
)
ESPHOME_LEAK = (
    "homeassistant/binary_sensor/basement/basement_leak/config",
    {
        "dev_cla": "moisture",
        "name": "Leak",
        "stat_t": "basement/binary_sensor/leak/state",
        "avty_t": "basement/status",
        "uniq_id": "ESPbinary_sensorleak",
        "dev": {
            "ids": "a4cf12fedcba",
            "name": "basement",
            "sw": "esphome v2024.6.1",
            "mdl": "esp8266",
            "mf": "espressif",
        },
    },
)

# A Shelly Plus H&T through a discovery script: `~`, a template with a filter chain.
SHELLY_HUMIDITY = (
    "homeassistant/sensor/shellyplusht-08b61fcd1a2b/humidity/config",
    {
        "name": "Humidity",
        "uniq_id": "shellyplusht-08b61fcd1a2b-humidity",
        "~": "shellyplusht-08b61fcd1a2b/",
        "stat_t": "~status/humidity:0",
        "avty_t": "~online",
        "pl_avail": "true",
        "pl_not_avail": "false",
        "val_tpl": "{{ value_json.rh | float | round(1) }}",
        "dev_cla": "humidity",
        "unit_of_meas": "%",
        "dev": {
            "ids": ["shellyplusht-08b61fcd1a2b"],
            "name": "Shelly H&T",
            "mf": "Shelly",
            "mdl": "SNSN-0013A",
        },
    },
)

# Zigbee2MQTT's own Home Assistant discovery for the leak sensor: long keys, an availability list.
Z2M_HA_LEAK = (
    "homeassistant/binary_sensor/0x00158d0004a1b2c3/water_leak/config",
    {
        "availability": [
            {"topic": "zigbee2mqtt/bridge/state", "value_template": "{{ value_json.state }}"},
            {"topic": "zigbee2mqtt/Bathroom leak/availability", "value_template": "{{ value_json.state }}"},
        ],
        "availability_mode": "all",
        "device": {
            "identifiers": ["zigbee2mqtt_0x00158d0004a1b2c3"],
            "manufacturer": "Aqara",
            "model": "Water leak sensor",
            "name": "Bathroom leak",
            "via_device": "zigbee2mqtt_bridge_0x00124b0024c1a2b3",
        },
        "device_class": "moisture",
        "object_id": "bathroom_leak_water_leak",
        "origin": {"name": "Zigbee2MQTT", "sw": "2.1.1", "url": "https://www.zigbee2mqtt.io"},
        "payload_off": False,
        "payload_on": True,
        "state_topic": "zigbee2mqtt/Bathroom leak",
        "unique_id": "0x00158d0004a1b2c3_water_leak_zigbee2mqtt",
        "value_template": "{{ value_json.water_leak }}",
    },
)
TASMOTA_RELAY = (
    "homeassistant/switch/A1B2C3_RL_1/config",
    {
        "name": "Tasmota",
        "cmd_t": "cmnd/tasmota_A1B2C3/POWER",
        "stat_t": "tele/tasmota_A1B2C3/STATE",
        "val_tpl": "{{value_json.POWER}}",
        "pl_off": "OFF",
        "pl_on": "ON",
        "uniq_id": "A1B2C3_RL_1",
    },
)


def payload(message: Any) -> bytes:
    return json.dumps(message).encode()
