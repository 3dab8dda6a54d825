"""Prometheus metrics of the process (prometheus-client: the well-kept library for the text format)."""

from __future__ import annotations

from gateway.ops.process import package_on_use

# prometheus_client's `__init__` imports its exposition too, and with it HTTP and WSGI servers,
# urllib.request, gzip: 0.4 MiB the metrics need only when scraped (`exposition`).
package_on_use("prometheus_client")

from prometheus_client.metrics import Counter, Gauge, Histogram  # noqa: E402
from prometheus_client.registry import CollectorRegistry  # noqa: E402

registry = CollectorRegistry(auto_describe=True)

mqtt_messages = Counter(
    "gateway_mqtt_messages", "MQTT messages received, by outcome", ["outcome"], registry=registry
)
alerts = Counter("gateway_alerts", "Alert events, by event", ["event"], registry=registry)
deliveries = Counter(
    "gateway_deliveries",
    "Deliveries to clients, by protocol and outcome",
    ["protocol", "outcome"],
    registry=registry,
)
layer_overflows = Counter(
    "gateway_channel_layer_overflows", "Messages dropped because a channel was full", registry=registry
)
websocket_connections = Gauge(
    "gateway_websocket_connections", "Open WebSocket connections", registry=registry
)
bad_input = Counter(
    "gateway_bad_input", "Rejected input, by protocol and reason", ["protocol", "reason"], registry=registry
)
cooldown_drops = Counter(
    "gateway_cooldown_drops", "Raises a rule's cooldown dropped, by rule", ["rule"], registry=registry
)
protocol_up = Gauge("gateway_protocol_up", "1 while a protocol server is up", ["protocol"], registry=registry)
latency = Histogram(
    "gateway_trigger_to_delivery_seconds",
    "From MQTT receipt to hand-off to a client, by protocol",
    ["protocol"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=registry,
)
telegram_updates = Counter(
    "gateway_telegram_updates",
    "Telegram updates and server events, by outcome",
    ["outcome"],
    registry=registry,
)
telegram_queue = Gauge(
    "gateway_telegram_queue", "Telegram sends and edits waiting or in flight", registry=registry
)


def count_telegram(outcome: str) -> None:
    """The Telegram server's counter: sends go to `deliveries`, everything else to `telegram_updates`."""
    if outcome.startswith("send_"):
        deliveries.labels("telegram", outcome.removeprefix("send_")).inc()
    else:
        telegram_updates.labels(outcome).inc()


# Alert management (SPEC §10)
silences_active = Gauge("gateway_silences_active", "Silences in effect now", registry=registry)
notifications_suppressed = Counter(
    "gateway_notifications_suppressed",
    "Notifications a silence held back (Telegram, actions), by alert event",
    ["event"],
    registry=registry,
)
mode_suppressed = Counter(
    "gateway_raises_suppressed_by_mode",
    "Raises held back because the site was not in one of the rule's modes, by rule",
    ["rule"],
    registry=registry,
)
escalation_steps = Counter(
    "gateway_escalation_steps", "Escalation steps fired, by level", ["level"], registry=registry
)


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus's text format, and its content type."""
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST
