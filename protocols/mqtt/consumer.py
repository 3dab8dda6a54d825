"""`MqttConsumer`: the base class for applications of `mqtt` scopes, in the Channels style."""

from __future__ import annotations

from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer

from protocols.dispatch import DirectDispatch
from protocols.mqtt.types import MqttConnectEvent, MqttDisconnectEvent, MqttMessageEvent

__all__ = ["MqttConsumer"]


class MqttConsumer(DirectDispatch, AsyncConsumer):
    """One instance per device scope; events dispatch by type (`mqtt.message` -> `mqtt_message`)."""

    async def mqtt_connect(self, event: MqttConnectEvent) -> None:
        """The broker connection is up (again); `session_present` says whether it kept our session."""

    async def mqtt_message(self, event: MqttMessageEvent) -> None:
        """A message on one of the device's topics."""

    async def mqtt_disconnect(self, event: MqttDisconnectEvent) -> None:
        """The broker connection is gone; when `final`, the scope ends."""
        if event["final"]:
            raise StopConsumer()

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        await self.send(
            {"type": "mqtt.publish", "topic": topic, "payload": payload, "qos": qos, "retain": retain}
        )

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        await self.send({"type": "mqtt.subscribe", "topic": topic_filter, "qos": qos})

    async def unsubscribe(self, topic_filter: str) -> None:
        await self.send({"type": "mqtt.unsubscribe", "topic": topic_filter})

    @property
    def device(self) -> str:
        return str(self.scope["device"])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} device={self.scope.get('device')!r}>"
