"""A `[[sensors]]` entry: where its readings come from and how its value reads."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from gateway.config.fields import Duration, Section

__all__ = ["ZIGBEE2MQTT_PROPERTIES", "Sensor"]

# Zigbee2MQTT's state properties of interest -> (device class, unit): what a sensor reading one
# of them is without being told (SPEC §11), for discovered and configured sensors alike.
ZIGBEE2MQTT_PROPERTIES: dict[str, tuple[str, str]] = {
    "contact": ("door", ""),
    "occupancy": ("occupancy", ""),
    "water_leak": ("moisture", ""),
    "smoke": ("smoke", ""),
    "gas": ("gas", ""),
    "carbon_monoxide": ("carbon_monoxide", ""),
    "tamper": ("tamper", ""),
    "battery_low": ("battery", ""),
    "battery": ("battery", "%"),
    "temperature": ("temperature", "°C"),
    "humidity": ("humidity", "%"),
    "pressure": ("pressure", "hPa"),
    "illuminance": ("illuminance", "lx"),
    "illuminance_lux": ("illuminance", "lx"),
    "power": ("power", "W"),
    "energy": ("energy", "kWh"),
}


class Sensor(Section):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = ""
    zone: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]+$")
    topic: str = Field(min_length=1)
    format: Literal["zigbee2mqtt", "tasmota", "json", "plain"] = "json"
    field: str = ""
    availability_topic: str = ""
    expire_after: Duration = 0.0
    # How its value reads (SPEC §11, gateway.engine.display): "°C"; Home Assistant's class
    # ("door", "moisture", "temperature"); value -> text, e.g. { "false" = "open" }.
    unit: str = Field(default="", max_length=16)
    device_class: str = Field(default="", pattern=r"^[a-z0-9_]{0,40}$")
    labels: dict[str, Annotated[str, Field(min_length=1, max_length=64)]] = {}
    # The value as read, made a number ("float", "int") and rounded to `round` decimals, then a
    # boolean: `payload_on` (text, any case) is true, `payload_off` false (gateway.engine.formats).
    cast: Literal["", "float", "int"] = ""
    round: int | None = Field(default=None, ge=0, le=10)
    payload_on: str = ""
    payload_off: str = ""
    # What the availability topic sends besides online/offline (Tasmota: "Online"/"Offline").
    payload_available: str = ""
    payload_not_available: str = ""

    @model_validator(mode="after")
    def _defaults(self) -> Sensor:
        if not self.name:
            self.name = self.id
        if self.format == "zigbee2mqtt" and not self.device_class:
            known = ZIGBEE2MQTT_PROPERTIES.get(self.field.rsplit(".", 1)[-1])
            if known is not None:
                self.device_class = known[0]
                self.unit = self.unit or known[1]
        # Looked up as gateway.engine.display.label_key gives them: booleans and text in lower case.
        self.labels = {key.strip().lower(): text for key, text in self.labels.items()}
        if "+" in self.topic or "#" in self.topic:
            raise ValueError("topic must be a full topic, without + or #")
        if self.format in ("zigbee2mqtt", "json") and not self.field:
            raise ValueError(f"field is required for format {self.format!r}")
        if not self.availability_topic:
            if self.format == "zigbee2mqtt":
                self.availability_topic = f"{self.topic}/availability"
            elif self.format == "tasmota":
                parts = self.topic.split("/")
                if len(parts) == 3 and parts[0] == "tele":
                    self.availability_topic = f"tele/{parts[1]}/LWT"
        return self

    @property
    def result_topic(self) -> str:
        """Tasmota answers commands on `stat/<t>/RESULT`, which may carry the field too (`POWER`)."""
        parts = self.topic.split("/")
        if self.format == "tasmota" and self.field and len(parts) == 3 and parts[0] == "tele":
            if parts[2] in ("SENSOR", "STATE"):
                return f"stat/{parts[1]}/RESULT"
        return ""

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic the sensor listens on: state, availability, Tasmota's RESULT."""
        return tuple(t for t in (self.topic, self.availability_topic, self.result_topic) if t)
