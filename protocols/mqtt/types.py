"""Scope and event types of the `mqtt` ASGI sub-spec (docs/specs/mqtt.md)."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from asgiref.typing import ASGIVersions

MqttVersion = Literal["3.1.1", "5"]


class MqttScope(TypedDict):
    type: Literal["mqtt"]
    asgi: ASGIVersions
    device: str
    topic: str
    topics: list[str]
    lazy: bool
    client_id: str
    broker: tuple[str, int]
    state: NotRequired[dict[str, Any]]


class MqttConnectEvent(TypedDict):
    type: Literal["mqtt.connect"]
    protocol: MqttVersion
    session_present: bool


class MqttMessageEvent(TypedDict):
    type: Literal["mqtt.message"]
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    properties: dict[str, Any]


class MqttDisconnectEvent(TypedDict):
    type: Literal["mqtt.disconnect"]
    reason: str
    final: bool


class MqttPublishEvent(TypedDict):
    type: Literal["mqtt.publish"]
    topic: str
    payload: bytes
    qos: NotRequired[int]
    retain: NotRequired[bool]


class MqttSubscribeEvent(TypedDict):
    type: Literal["mqtt.subscribe"]
    topic: str
    qos: NotRequired[int]


class MqttUnsubscribeEvent(TypedDict):
    type: Literal["mqtt.unsubscribe"]
    topic: str


MqttReceiveEvent = MqttConnectEvent | MqttMessageEvent | MqttDisconnectEvent
MqttSendEvent = MqttPublishEvent | MqttSubscribeEvent | MqttUnsubscribeEvent
