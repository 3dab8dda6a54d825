"""`SiteConsumer`: the site's own MQTT topics: `gateway/<site>/ack` in, `gateway/<site>/alerts` out."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.engine.alerts import AckRefused
from gateway.ops import logs, metrics
from gateway.runtime import MQTT_OUT, Runtime
from protocols.mqtt.consumer import MqttConsumer
from protocols.mqtt.types import MqttConnectEvent, MqttMessageEvent


def ack_topic(site: str) -> str:
    return f"gateway/{site}/ack"


def alerts_topic(site: str) -> str:
    return f"gateway/{site}/alerts"


class SiteConsumer(MqttConsumer):
    forwarder: asyncio.Task[None] | None = None

    async def _join(self) -> None:
        # On the first event of whatever kind: a restarted instance gets no mqtt.connect.
        if self.channel_layer is not None and self.forwarder is None:
            self.forwarder = asyncio.ensure_future(self._forward())

    async def _forward(self) -> None:
        """Alert events from MQTT_OUT, which several MQTT processes share: each is published once."""
        while True:
            event = await self.channel_layer.receive(MQTT_OUT)
            if not await self._first(event):
                continue
            try:
                await self.alert_raised(event)
            except Exception as err:
                metrics.deliveries.labels("mqtt", "failed").inc()
                logs.mqtt.error("could not publish alert event %s: %s", event.get("seq"), err)

    async def _first(self, event: dict[str, Any]) -> bool:
        """False for an event another process already took (the Redis layer can hand it to two)."""
        claim = getattr(self.channel_layer, "claim", None)
        if claim is None or not event.get("saved", True):
            return True  # one process, or an unsaved event (seq 0): nothing to tell them apart
        try:
            return bool(await claim(f"mqtt-out:{event['seq']}"))
        except Exception as err:  # Redis away: better twice than never
            logs.mqtt.warning("could not claim alert event %s (%s); publishing it", event.get("seq"), err)
            return True

    async def mqtt_connect(self, event: MqttConnectEvent) -> None:
        await self._join()

    async def mqtt_message(self, event: MqttMessageEvent) -> None:
        await self._join()
        runtime: Runtime = self.scope["gateway"]
        try:
            alert_id = event["payload"].decode("utf-8").strip()
        except UnicodeDecodeError:
            alert_id = ""
        if not alert_id or len(alert_id) > 32:
            metrics.bad_input.labels("mqtt", "ack").inc()
            logs.mqtt.warning("%s: payload must be an alert id", event["topic"])
            return
        try:
            change = await runtime.book.acknowledge(alert_id, "mqtt")
        except AckRefused as err:
            logs.mqtt.warning("%s: %s", event["topic"], err)
            return
        logs.alerts.info("alert %s acknowledged by mqtt", change.alert["id"])
        await runtime.broadcast(change)

    async def alert_raised(self, event: dict[str, Any]) -> None:
        await self.publish(alerts_topic(self.scope["gateway"].config.gateway.site), event["text"], qos=1)
        metrics.deliveries.labels("mqtt", "ok").inc()
        if "received" in event:
            metrics.latency.labels("mqtt").observe(time.time() - event["received"])

    alert_acknowledged = alert_cleared = alert_repeated = alert_raised

    async def mqtt_disconnect(self, event: Any) -> None:
        if event["final"] and self.forwarder is not None:
            self.forwarder.cancel()
        await super().mqtt_disconnect(event)
