"""Discovery (SPEC §11): Zigbee2MQTT's device list in, `Sensor`s out; the running config is the
configured one plus what was discovered, and `default_rules` for it.

Pure: the discovery consumer (consumers.discovery) feeds it messages and applies the result.
Home Assistant's discovery messages are gateway.engine.homeassistant's.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from gateway.config import Condition, Config, Rule
from gateway.config.sensors import ZIGBEE2MQTT_PROPERTIES, Sensor
from gateway.engine.formats import PayloadError, decoder

__all__ = [
    "DiscoveredSensors",
    "DiscoveryError",
    "default_rules",
    "load_json",
    "parse_zigbee2mqtt",
    "safe_id",
    "with_discovered",
]

_NOT_ID = re.compile(r"[^A-Za-z0-9_.-]")
_NOT_ZONE = re.compile(r"[^A-Za-z0-9_-]")
# Zigbee2MQTT's `access` bit 1: the property is published in the device's state message.
_PUBLISHED = 1


class DiscoveryError(PayloadError):
    """A discovery message that gives no sensor; the message says why."""


# The database keeps sensor ids of up to 128 characters.
MAX_ID = 128


def safe_id(text: str) -> str:
    """An id from a name or topic: characters outside A-Za-z0-9_.- become `_`; a long one is cut,
    with a hash of the whole so that two long ones stay apart."""
    ident = _NOT_ID.sub("_", text) or "_"
    if len(ident) > MAX_ID:
        ident = f"{ident[: MAX_ID - 9]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return ident


def safe_zone(text: str) -> str:
    return _NOT_ZONE.sub("_", text.strip()) or "devices"


def load_json(payload: bytes, max_payload: int) -> Any:
    if len(payload) > max_payload:
        raise DiscoveryError(f"payload of {len(payload)} bytes is over discovery.max_payload ({max_payload})")
    try:
        return json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise DiscoveryError("payload is not UTF-8") from None
    except json.JSONDecodeError as err:
        raise DiscoveryError(f"payload is not valid JSON ({err.msg} at char {err.pos})") from None


def make_sensor(**fields: Any) -> Sensor:
    try:
        return Sensor.model_validate(fields)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise DiscoveryError(f"sensor {fields.get('id')!r}: {problems}") from None


# Zigbee2MQTT: <base>/bridge/devices


@decoder
def parse_zigbee2mqtt(
    payload: bytes, base: str, zone: str, max_payload: int
) -> tuple[list[Sensor], list[str]]:
    """Sensors of every device in a `bridge/devices` list (1.x and 2.x), and what was skipped, why."""
    devices = load_json(payload, max_payload)
    if not isinstance(devices, list):
        raise DiscoveryError(f"bridge/devices is {type(devices).__name__}, not a list of devices")
    sensors: list[Sensor] = []
    problems: list[str] = []
    ids: set[str] = set()
    for n, device in enumerate(devices):
        if not isinstance(device, dict):
            problems.append(f"device [{n}] is not an object")
            continue
        if device.get("type") == "Coordinator" or device.get("disabled") is True:
            continue
        definition = device.get("definition")
        if not isinstance(definition, dict):
            continue  # not (yet) interviewed or not supported: nothing to read
        name = device.get("friendly_name")
        if not isinstance(name, str) or not name:
            problems.append(f"device [{n}] has no friendly_name")
            continue
        exposes = definition.get("exposes")
        if not isinstance(exposes, list):
            problems.append(f"device {name!r}: definition.exposes is not a list")
            continue
        for expose in _properties(exposes, ""):
            try:
                sensor = _zigbee_sensor(expose, name, base, zone)
            except DiscoveryError as err:
                problems.append(f"device {name!r}: {err}")
                continue
            if sensor is not None and sensor.id not in ids:
                ids.add(sensor.id)
                sensors.append(sensor)
    return sensors, problems


def _properties(exposes: list[Any], prefix: str) -> Iterable[dict[str, Any]]:
    """Every exposed property, with its path; those of a specific expose (a switch's, a climate's)
    sit in `features` at the top of the state, those of a composite under its own property."""
    for expose in exposes:
        if not isinstance(expose, dict):
            continue
        features = expose.get("features")
        if isinstance(features, list):
            inner = prefix
            if expose.get("type") == "composite" and isinstance(expose.get("property"), str):
                inner = f"{prefix}{expose['property']}."
            yield from _properties(features, inner)
        elif isinstance(expose.get("property"), str):
            yield {**expose, "property": prefix + expose["property"]}


def _zigbee_sensor(expose: dict[str, Any], device: str, base: str, zone: str) -> Sensor | None:
    field = expose["property"]
    known = ZIGBEE2MQTT_PROPERTIES.get(field.rsplit(".", 1)[-1])
    access = expose.get("access", _PUBLISHED)
    if known is None or not isinstance(access, int) or not access & _PUBLISHED:
        return None
    device_class, unit = known
    given = expose.get("unit")
    if isinstance(given, str) and given and given != "raw" and len(given) <= 16:
        unit = given
    label = expose.get("label") if isinstance(expose.get("label"), str) else ""
    label = label or field.rsplit(".", 1)[-1].replace("_", " ")
    fields: dict[str, Any] = {}
    on, off = expose.get("value_on"), expose.get("value_off")
    if expose.get("type") == "binary" and isinstance(on, str) and isinstance(off, str):
        fields = {"payload_on": on, "payload_off": off}  # "ON"/"OFF" rather than true/false
    return make_sensor(
        id=safe_id(f"{device}.{field}"),
        name=f"{device} {label.lower()}",
        zone=zone,
        topic=f"{base}/{device}",
        format="zigbee2mqtt",
        field=field,
        availability_topic=f"{base}/{device}/availability",
        unit=unit,
        device_class=device_class,
        **fields,
    )


class DiscoveredSensors:
    """What discovery found: Zigbee2MQTT's list, and Home Assistant's configs by topic."""

    def __init__(self) -> None:
        self.zigbee: list[Sensor] = []
        self.configs: dict[str, Sensor] = {}
        self.ids: frozenset[str] = frozenset()  # of every discovered sensor, for a look-up per message

    def set_zigbee(self, sensors: list[Sensor]) -> bool:
        """The new list; whether anything changed."""
        changed = sensors != self.zigbee
        self.zigbee = sensors
        return self._changed(changed)

    def set_config(self, topic: str, sensor: Sensor | None, zigbee2mqtt: str = "") -> bool:
        """A config topic's sensor, or None for one removed; whether anything changed.

        With Zigbee2MQTT's list read (its base topic given), the Home Assistant configs Zigbee2MQTT
        publishes of the same devices are left out: the list has their properties of interest, and
        the configs every other one (link quality, voltage, update state).
        """
        if sensor is not None and zigbee2mqtt and sensor.topic.startswith(f"{zigbee2mqtt}/"):
            sensor = None
        if sensor is None:
            return self._changed(self.configs.pop(topic, None) is not None)
        changed = self.configs.get(topic) != sensor
        self.configs[topic] = sensor
        return self._changed(changed)

    def mirror(self, sensors: list[Sensor]) -> bool:
        """Another process's discovered sensors, as they are (split mode); whether anything changed."""
        changed = sensors != self.sensors
        self.zigbee, self.configs = sensors, {}
        return self._changed(changed)

    def _changed(self, changed: bool) -> bool:
        if changed:
            self.ids = frozenset(s.id for s in self.sensors)
        return changed

    @property
    def sensors(self) -> list[Sensor]:
        return [*self.zigbee, *(self.configs[t] for t in sorted(self.configs))]


def with_discovered(config: Config, discovered: Iterable[Sensor]) -> Config:
    """The config to run: its own sensors and rules, then the discovered sensors no configured one
    (or earlier discovered one) already reads (same id, or same topic and field), and their
    default rules when `[discovery] default_rules` is on."""
    sensors = list(config.sensors)
    ids = {s.id for s in sensors}
    places = {(s.topic, s.field) for s in sensors}
    added: list[Sensor] = []
    for sensor in discovered:
        if sensor.id in ids or (sensor.topic, sensor.field) in places:
            continue
        ids.add(sensor.id)
        places.add((sensor.topic, sensor.field))
        added.append(sensor)
    rules = list(config.rules)
    if config.discovery.default_rules:
        rule_ids = {r.id for r in rules}
        rules += [r for r in default_rules(added) if r.id not in rule_ids]
    return config.model_copy(update={"sensors": sensors + added, "rules": rules})


_DETECTED = {
    "moisture": "water leak",
    "smoke": "smoke",
    "gas": "gas",
    "carbon_monoxide": "carbon monoxide",
}


def default_rules(sensors: Iterable[Sensor]) -> list[Rule]:
    """SPEC §11: leaks, smoke, gas and CO critical; tamper, low battery and offline warnings. Each
    raises at once and clears when its condition ends; one offline rule per device (availability topic)."""
    rules: list[Rule] = []
    offline: set[str] = set()
    for s in sensors:
        cls = s.device_class
        if cls in _DETECTED:
            rules.append(_rule(s, "detected", Condition(equals=True), "critical", _DETECTED[cls]))
        elif cls == "tamper":
            rules.append(_rule(s, "tampered", Condition(equals=True), "warning", "tampered with"))
        elif cls == "battery" and s.unit == "%":
            rules.append(_rule(s, "low", Condition(below=10), "warning", "battery low ({display})"))
        elif cls == "battery":
            rules.append(_rule(s, "low", Condition(equals=True), "warning", "battery low"))
        watched = s.availability_topic or (s.id if s.expire_after else "")
        if watched and watched not in offline:
            offline.add(watched)
            rules.append(_rule(s, "offline", Condition(offline=True), "warning", "offline"))
    return rules


def _rule(sensor: Sensor, what: str, when: Condition, severity: str, text: str) -> Rule:
    return Rule.model_validate(
        {
            "id": f"{sensor.id}.{what}",
            "sensor": sensor.id,
            "when": when,
            "severity": severity,
            "message": f"{{sensor.name}}: {text}",
        }
    )
