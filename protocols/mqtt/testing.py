"""`MqttCommunicator`: drive an `mqtt` application in-process, as Channels' communicators do."""

from __future__ import annotations

from typing import Any

from asgiref.testing import ApplicationCommunicator

from protocols.checking import checked
from protocols.mqtt.events import connect_event, validate_outgoing
from protocols.mqtt.types import MqttScope, MqttSendEvent, MqttVersion

__all__ = ["MqttCommunicator", "make_scope"]


def make_scope(device: str, topics: list[str], **extra: Any) -> MqttScope:
    scope: MqttScope = {
        "type": "mqtt",
        "asgi": {"version": "3.0", "spec_version": "1.0"},
        "device": device,
        "topic": topics[0],
        "topics": list(topics),
        "lazy": False,
        "client_id": "test",
        "broker": ("127.0.0.1", 1883),
    }
    scope.update(extra)  # type: ignore[typeddict-item]
    return scope


class MqttCommunicator(ApplicationCommunicator):
    def __init__(self, application: Any, device: str = "test", topics: list[str] | None = None, **extra: Any):
        scope = make_scope(device, topics or [f"test/{device}"], **extra)
        super().__init__(checked(application, validate_outgoing), scope)

    async def connect(self, protocol: MqttVersion = "5", session_present: bool = False) -> None:
        await self.send_input(connect_event(protocol, session_present))

    async def message(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, dup: bool = False
    ) -> None:
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        await self.send_input(
            {
                "type": "mqtt.message",
                "topic": topic,
                "payload": payload,
                "qos": qos,
                "retain": retain,
                "dup": dup,
                "properties": {},
            }
        )

    async def receive_output(self, timeout: float = 1) -> MqttSendEvent:
        """The next event the application sent."""
        return await super().receive_output(timeout)  # type: ignore[no-any-return]

    async def disconnect(self, final: bool = True, timeout: float = 1) -> None:
        await self.send_input({"type": "mqtt.disconnect", "reason": "test", "final": final})
        if final:
            await self.wait(timeout)
