"""`[discovery]`: sensors the broker already describes (SPEC §11), from Zigbee2MQTT and Home Assistant."""

from __future__ import annotations

from pydantic import Field, field_validator

from gateway.config.fields import Section

__all__ = ["DiscoverySection"]


def _prefix(value: str) -> str:
    value = value.strip("/")
    if "+" in value or "#" in value:
        raise ValueError("must be a topic prefix without + or #")
    return value


class DiscoverySection(Section):
    # Zigbee2MQTT's base topic ("" off): its retained <base>/bridge/devices lists the devices.
    zigbee2mqtt: str = ""
    # Home Assistant's discovery prefix ("" off): <prefix>/<component>/[<node>/]<object>/config.
    homeassistant: str = ""
    # The zone of Zigbee2MQTT's devices (Home Assistant's: the device's suggested_area, or "devices").
    zone: str = Field(default="zigbee", pattern=r"^[A-Za-z0-9_-]+$")
    # Rules for discovered sensors: leaks, smoke, gas, CO, tamper, low battery, offline.
    default_rules: bool = False
    # A bridge/devices of 60 devices is a few hundred KiB: not held to mqtt.max_payload.
    max_payload: int = Field(default=4 * 1024 * 1024, gt=0)

    _topics = field_validator("zigbee2mqtt", "homeassistant")(_prefix)

    @property
    def enabled(self) -> bool:
        return bool(self.zigbee2mqtt or self.homeassistant)

    @property
    def topics(self) -> tuple[str, ...]:
        """The filters discovery listens on."""
        topics: list[str] = []
        if self.zigbee2mqtt:
            topics.append(f"{self.zigbee2mqtt}/bridge/devices")
        if self.homeassistant:
            topics += [f"{self.homeassistant}/+/+/config", f"{self.homeassistant}/+/+/+/config"]
        return tuple(topics)
