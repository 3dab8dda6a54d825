"""Home Assistant MQTT discovery (SPEC §11): a `<prefix>/<component>/[<node>/]<object>/config`
message of a `sensor` or `binary_sensor` in, a `Sensor` out, as Tasmota, ESPHome, Shelly and
Zigbee2MQTT publish them (abbreviated keys, `~`, the common value_template forms).
"""

from __future__ import annotations

import re
from typing import Any

from gateway.config.sensors import Sensor
from gateway.engine.discovery import DiscoveryError, load_json, make_sensor, safe_id, safe_zone
from gateway.engine.formats import decoder

__all__ = ["COMPONENTS", "Unsupported", "parse_config_topic", "parse_homeassistant", "parse_template"]

COMPONENTS = ("sensor", "binary_sensor")

# The abbreviations of the keys read here (Home Assistant's abbreviations.py names them all).
_ABBREVIATIONS = {
    "stat_t": "state_topic",
    "val_tpl": "value_template",
    "unit_of_meas": "unit_of_measurement",
    "dev_cla": "device_class",
    "avty_t": "availability_topic",
    "avty": "availability",
    "avty_mode": "availability_mode",
    "pl_on": "payload_on",
    "pl_off": "payload_off",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "exp_aft": "expire_after",
    "uniq_id": "unique_id",
    "obj_id": "object_id",
    "dev": "device",
    "t": "topic",
}
_DEVICE_ABBREVIATIONS = {"sa": "suggested_area", "ids": "identifiers", "mf": "manufacturer", "mdl": "model"}


class Unsupported(DiscoveryError):
    """A discovery message of a component the gateway does not read (a light, a switch)."""


def parse_config_topic(topic: str, prefix: str) -> tuple[str, str, str]:
    """(component, node, object) of `<prefix>/<component>/[<node>/]<object>/config`."""
    parts = topic[len(prefix) + 1 :].split("/")
    if not topic.startswith(prefix + "/") or parts[-1] != "config" or len(parts) not in (3, 4):
        raise DiscoveryError(f"{topic!r} is not <prefix>/<component>/[<node>/]<object>/config")
    node = parts[1] if len(parts) == 4 else ""
    return parts[0], node, parts[-2]


@decoder
def parse_homeassistant(topic: str, payload: bytes, prefix: str, max_payload: int) -> Sensor | None:
    """The sensor a config message describes; None when it is empty (the entity is removed)."""
    component, node, obj = parse_config_topic(topic, prefix)
    if not payload.strip():
        return None
    if component not in COMPONENTS:
        raise Unsupported(f"component {component!r} is not read (only {', '.join(COMPONENTS)})")
    config = load_json(payload, max_payload)
    if not isinstance(config, dict):
        raise DiscoveryError(f"config is {type(config).__name__}, not an object")
    config = _expand(config)
    state_topic = config.get("state_topic")
    if not isinstance(state_topic, str) or not state_topic:
        raise DiscoveryError("no state_topic")
    fmt, field, cast, places = parse_template(config.get("value_template"))
    given: Any = config.get("device")
    device = {_DEVICE_ABBREVIATIONS.get(k, k): v for k, v in given.items()} if isinstance(given, dict) else {}
    unique_id = config.get("unique_id")
    if not isinstance(unique_id, str) or not unique_id:
        unique_id = f"{node}.{obj}" if node else obj
    ident = safe_id(unique_id)
    area = device.get("suggested_area")
    fields: dict[str, Any] = {
        "id": ident,
        "name": _name(config.get("name"), device.get("name"), ident),
        "zone": safe_zone(area) if isinstance(area, str) and area.strip() else "devices",
        "topic": state_topic,
        "format": fmt,
        "field": field,
        "cast": cast,
        "round": places,
        "unit": _text(config.get("unit_of_measurement")),
        "device_class": _text(config.get("device_class")).lower(),
    }
    if component == "binary_sensor":
        fields["payload_on"] = _text(config.get("payload_on", "ON"))
        fields["payload_off"] = _text(config.get("payload_off", "OFF"))
    expire = config.get("expire_after")
    if isinstance(expire, int | float) and not isinstance(expire, bool) and expire > 0:
        fields["expire_after"] = float(expire)
    fields.update(_availability(config))
    return make_sensor(**fields)


def _expand(config: dict[str, Any]) -> dict[str, Any]:
    """Abbreviated keys spelt out; `~` at the start or end of a topic replaced by the base topic."""
    out = {_ABBREVIATIONS.get(k, k): v for k, v in config.items()}
    base = out.get("~")
    if isinstance(out.get("availability"), list):
        out["availability"] = [
            _expand({k: v for k, v in a.items()} | ({"~": base} if base is not None else {}))
            for a in out["availability"]
            if isinstance(a, dict)
        ]
    if isinstance(base, str):
        for key, value in out.items():
            if (key == "topic" or key.endswith("_topic")) and isinstance(value, str):
                if value.startswith("~"):
                    out[key] = base + value[1:]
                elif value.endswith("~"):
                    out[key] = value[:-1] + base
    return out


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _name(name: Any, device: Any, ident: str) -> str:
    """Home Assistant shows an entity's name after its device's: "Kitchen Temperature"."""
    name = name if isinstance(name, str) else ""
    device = device if isinstance(device, str) else ""
    if device and name and not name.startswith(device):
        return f"{device} {name}"
    return name or device or ident


def _availability(config: dict[str, Any]) -> dict[str, str]:
    entries = config.get("availability")
    topic = config.get("availability_topic")
    on, off = config.get("payload_available"), config.get("payload_not_available")
    if isinstance(entries, list) and entries and not topic:
        # Zigbee2MQTT lists its bridge's state first, the device's own after it: the last one is the device's.
        entry = entries[-1]
        topic = entry.get("topic")
        on, off = entry.get("payload_available", on), entry.get("payload_not_available", off)
    if not isinstance(topic, str) or not topic:
        return {}
    return {
        "availability_topic": topic,
        "payload_available": _text(on),
        "payload_not_available": _text(off),
    }


# value_template: `{{ value }}`, `{{ value_json.a.b }}`, `{{ value_json['a'] }}`, then filters.
_TEMPLATE = re.compile(
    r"\{\{-?\s*(value_json|value)((?:\s*(?:\.\w+|\[\s*(?:'[^']*'|\"[^\"]*\")\s*\]))*)(.*?)-?\}\}"
)
_SEGMENT = re.compile(r"\.(\w+)|\[\s*(?:'([^']*)'|\"([^\"]*)\")\s*\]")
_FILTER = re.compile(r"\|\s*(float|int|round)\s*(?:\(\s*([^)]*?)\s*\))?\s*")


def parse_template(template: Any) -> tuple[str, str, str, int | None]:
    """(format, field, cast, round) for a sensor; DiscoveryError for a template of another form."""
    if template is None or template == "":
        return "plain", "", "", None
    if not isinstance(template, str):
        raise DiscoveryError("value_template is not text")
    match = _TEMPLATE.fullmatch(template.strip())
    if match is None:
        raise DiscoveryError(f"value_template {template[:80]!r} is not of a form the gateway reads")
    source, path, filters = match.groups()
    segments = [a or b or c for a, b, c in _SEGMENT.findall(path)]
    if source == "value" and segments:
        raise DiscoveryError(f"value_template {template[:80]!r}: `value` is text, it has no fields")
    if source == "value_json" and not segments:
        raise DiscoveryError(f"value_template {template[:80]!r} reads the whole JSON, not a field")
    if any(not s or "." in s for s in segments):
        raise DiscoveryError(f"value_template {template[:80]!r}: a field name with a dot is not read")
    cast, places = "", None
    position = 0
    filters = filters.strip()
    for f in _FILTER.finditer(filters):
        if f.start() != position:
            break
        position = f.end()
        name, argument = f.group(1), f.group(2)
        if name == "round":
            if argument and not argument.isdigit():
                raise DiscoveryError(f"value_template {template[:80]!r}: round takes a number of places")
            places = int(argument or 0)
        else:
            cast = name  # float(0), int(0): the default is not used, an unreadable value is an error
    if position != len(filters):
        raise DiscoveryError(f"value_template {template[:80]!r}: a filter other than float, int, round(n)")
    if source == "value":
        return "plain", "", cast, places
    return "json", ".".join(segments), cast, places
