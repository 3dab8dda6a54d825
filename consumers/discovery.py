"""`DiscoveryConsumer`: Zigbee2MQTT's `<base>/bridge/devices` and Home Assistant's discovery
configs in, the discovered sensors kept on the runtime and applied without a restart (SPEC §11).

Parsing lives in gateway.engine.discovery and gateway.engine.homeassistant; applying the sensors
(a config of the configured ones and the discovered, as a reload applies it) is the server's
(`Runtime.apply_discovered`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from gateway.engine.discovery import parse_zigbee2mqtt
from gateway.engine.formats import PayloadError
from gateway.engine.homeassistant import Unsupported, parse_config_topic, parse_homeassistant
from gateway.ops import logs, metrics
from gateway.runtime import DISCOVERED, DISCOVERY, Runtime
from protocols.mqtt.consumer import MqttConsumer
from protocols.mqtt.types import MqttConnectEvent, MqttMessageEvent

__all__ = ["DEVICE", "DiscoveryConsumer"]

# The MQTT device of the discovery topics (a sensor id has no colon).
DEVICE = "discovery:"
# A burst of retained configs (every entity at start-up) is applied once, this long after its first.
SETTLE = 0.2

log = logs.sensors
_bad_input_log = logs.RateLimit(interval=30.0)
_said: set[str] = set()  # components not read, each logged once


class DiscoveryConsumer(MqttConsumer):
    runtime: Runtime
    applying: asyncio.Task[None] | None = None
    # Something changed since the last apply began.
    dirty = False

    async def mqtt_message(self, event: MqttMessageEvent) -> None:
        self.runtime = runtime = self.scope["gateway"]
        settings = runtime.config.discovery
        topic, payload = event["topic"], event["payload"]
        try:
            if settings.zigbee2mqtt and topic == f"{settings.zigbee2mqtt}/bridge/devices":
                sensors, problems = parse_zigbee2mqtt(
                    payload, settings.zigbee2mqtt, settings.zone, settings.max_payload
                )
                if problems:
                    self._bad(topic, "; ".join(problems), devices=len(problems))
                changed = runtime.discovered.set_zigbee(sensors)
            else:
                sensor = parse_homeassistant(topic, payload, settings.homeassistant, settings.max_payload)
                changed = runtime.discovered.set_config(topic, sensor, settings.zigbee2mqtt)
        except Unsupported as err:
            metrics.mqtt_messages.labels("ignored").inc()
            component = parse_config_topic(topic, settings.homeassistant)[0]
            if component not in _said:
                _said.add(component)
                log.info("discovery: %s on %s and others like it are skipped: %s", component, topic, err)
            return
        except PayloadError as err:
            self._bad(topic, str(err))
            return
        metrics.mqtt_messages.labels("ok").inc()
        if changed:
            self.dirty = True
            if self.applying is None or self.applying.done():
                self.applying = asyncio.ensure_future(self._apply())

    async def _apply(self) -> None:
        # One apply at a time, each of the newest state; a burst settles first.
        while self.dirty:
            await asyncio.sleep(SETTLE)
            self.dirty = False
            try:
                await self.runtime.apply_discovered()
            except Exception:
                log.exception("discovery: applying the discovered sensors failed")
            await self._tell()

    async def mqtt_connect(self, event: MqttConnectEvent) -> None:
        self.runtime = self.scope["gateway"]
        if self.channel_layer is not None:
            await self.channel_layer.group_add(DISCOVERY, self.channel_name)

    async def discovery_request(self, event: dict[str, Any]) -> None:
        """A process without MQTT started (split mode): it hears what was found."""
        await self._tell()

    async def _tell(self) -> None:
        """What was found, to the processes without MQTT (runtime.follow_sensors)."""
        if self.channel_layer is None:
            return
        sensors = [s.model_dump() for s in self.runtime.discovered.sensors]
        await self.runtime.hand_over(
            self.channel_layer.group_send, DISCOVERED, {"type": "sensors.discovered", "sensors": sensors}
        )

    def _bad(self, topic: str, problem: str, devices: int = 0) -> None:
        """A malformed message, or malformed `devices` of a list whose others are read."""
        if not devices:
            metrics.mqtt_messages.labels("bad_payload").inc()
        metrics.bad_input.labels("mqtt", "discovery").inc(devices or 1)
        allowed, held = _bad_input_log.allow(topic)
        if allowed:
            log.warning(
                "discovery: skipped on %s: %s%s",
                topic,
                problem[:1000],
                f" ({held} similar not logged)" if held else "",
            )

    async def mqtt_disconnect(self, event: Any) -> None:
        if event["final"] and self.applying is not None:
            self.applying.cancel()
        if event["final"] and self.channel_layer is not None:
            with contextlib.suppress(Exception):  # the layer is away: nothing to leave
                await self.channel_layer.group_discard(DISCOVERY, self.channel_name)
        await super().mqtt_disconnect(event)
