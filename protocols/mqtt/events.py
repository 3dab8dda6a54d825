"""The `mqtt.connect` event, and checks on what an application sends: an invalid event raises
from `send`, as ASGI asks."""

from __future__ import annotations

from typing import Any, cast

from protocols.mqtt.routing import validate_filter, validate_topic
from protocols.mqtt.types import MqttConnectEvent, MqttSendEvent, MqttVersion

__all__ = ["connect_event", "validate_outgoing"]

_KEYS = {
    "mqtt.publish": {"type", "topic", "payload", "qos", "retain"},
    "mqtt.subscribe": {"type", "topic", "qos"},
    "mqtt.unsubscribe": {"type", "topic"},
}


def connect_event(protocol: MqttVersion, session_present: bool) -> MqttConnectEvent:
    """A fresh one for each instance: its application owns the event it receives."""
    return {"type": "mqtt.connect", "protocol": protocol, "session_present": session_present}


def validate_outgoing(event: Any) -> MqttSendEvent:
    if not isinstance(event, dict):
        raise TypeError(f"an mqtt event must be a dict, got {type(event).__name__}")
    kind = event.get("type")
    if kind not in _KEYS:
        raise ValueError(f"unknown mqtt event type {kind!r}; expected one of {sorted(_KEYS)}")
    unknown = set(event) - _KEYS[kind]
    if unknown:
        raise ValueError(f"{kind} has unknown keys {sorted(unknown)}")
    qos = event.get("qos", 1 if kind != "mqtt.unsubscribe" else None)
    if kind != "mqtt.unsubscribe" and type(qos) is not int:
        raise TypeError(f"{kind} qos must be an int, got {type(qos).__name__}")
    if kind != "mqtt.unsubscribe" and qos not in (0, 1, 2):
        raise ValueError(f"{kind} qos must be 0, 1 or 2, got {qos!r}")
    if kind == "mqtt.publish":
        validate_topic(event.get("topic"))
        if not isinstance(event.get("payload"), bytes):
            raise TypeError(f"mqtt.publish payload must be bytes, got {type(event.get('payload')).__name__}")
        if not isinstance(event.get("retain", False), bool):
            raise TypeError("mqtt.publish retain must be a bool")
    else:
        validate_filter(event.get("topic"))
    return cast(MqttSendEvent, event)
