"""The `mqtt` protocol: broker connection, device scopes, consumer base, test communicator."""

from protocols.mqtt.consumer import MqttConsumer
from protocols.mqtt.routing import TopicRouter, route

__all__ = ["MqttConsumer", "TopicRouter", "route"]
