"""Silences and escalation end to end: real mosquitto, the gateway process, a WebSocket client and an
MQTT watcher of the siren (the rule's actions) and of `gateway/<site>/alerts`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt.client as paho
import pytest

from tests.conftest import (
    GatewayFactory,
    Service,
    alert_event,
    metric,
    publish,
    recv_json,
    recv_until,
    ws_connect,
)

SIREN = "zigbee2mqtt/siren/set"


class Watcher:
    """Every message on the siren's topic and on gateway/test/alerts, in order."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def __aenter__(self) -> Watcher:
        loop = asyncio.get_running_loop()
        subscribed = asyncio.Event()
        client = self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="watcher")
        client.on_message = lambda c, u, m: loop.call_soon_threadsafe(
            self.messages.put_nowait, (m.topic, m.payload)
        )
        client.on_subscribe = lambda *a: loop.call_soon_threadsafe(subscribed.set)
        client.on_connect = lambda c, *a: c.subscribe([(SIREN, 1), ("gateway/test/alerts", 1)])
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        await asyncio.wait_for(subscribed.wait(), 5)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    async def next(self, topic: str) -> Any:
        while True:
            got, payload = await asyncio.wait_for(self.messages.get(), 5)
            if got == topic:
                return json.loads(payload)


@pytest.fixture
async def watched(gateway_factory: GatewayFactory, mosquitto: Service) -> AsyncIterator[tuple[Any, Watcher]]:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", extra=ESCALATING)
    async with Watcher(mosquitto.port) as watcher:
        yield gw, watcher


ESCALATING = """
[[sensors]]
id = "leak"
name = "Leak"
zone = "cellar"
topic = "sensors/leak"
format = "plain"

[[sensors]]
id = "smoke"
name = "Smoke"
zone = "attic"
topic = "sensors/smoke"
format = "plain"

[[rules]]
id = "leak-wet"
sensor = "leak"
when = { equals = true }
clear = { equals = false }
severity = "critical"

[[rules.escalate]]
after = "2s"
notify = ["alerts.oncall"]
actions = [{ topic = "zigbee2mqtt/siren/set", payload = '{"step":1,"alert":"{alert.id}"}' }]

[[rules.escalate]]
after = "3s"
notify = ["alerts.neighbour"]

[[rules]]
id = "smoke-seen"
sensor = "smoke"
when = { equals = true }
severity = "critical"

[[rules.escalate]]
after = "2500ms"
actions = [{ topic = "zigbee2mqtt/siren/set", payload = '{"step":"smoke"}' }]
"""


async def test_escalation_fires_each_step_once_and_stops_at_the_acknowledgement(
    watched: tuple[Any, Watcher],
) -> None:
    gw, watcher = watched
    ws = await ws_connect(gw)
    await recv_json(ws)
    # The leak is acknowledged at once: its steps (2 s, 3 s) never fire.
    await publish(gw.mqtt_port, "sensors/leak", "true")
    leak = (await recv_until(ws, alert_event("raised")))["alert"]
    await ws.send(json.dumps({"type": "ack", "alert": leak["id"]}))
    await recv_until(ws, alert_event("acknowledged"))
    # Smoke escalates after 2.5 s: by then the leak's first step would have fired.
    await publish(gw.mqtt_port, "sensors/smoke", "true")
    smoke = (await recv_until(ws, alert_event("raised")))["alert"]
    escalated = await recv_until(ws, alert_event("escalated"), timeout=10)
    assert escalated["alert"]["id"] == smoke["id"] and escalated["level"] == 1
    assert await watcher.next(SIREN) == {"step": "smoke"}
    # A second leak is left alone: step 1 (with its action), then step 2, each once.
    await publish(gw.mqtt_port, "sensors/leak", "false")
    await recv_until(ws, alert_event("cleared"))
    await publish(gw.mqtt_port, "sensors/leak", "true")
    second = (await recv_until(ws, alert_event("raised")))["alert"]
    one = await recv_until(ws, alert_event("escalated"), timeout=10)
    assert (one["alert"]["id"], one["level"], one["alert"]["escalation"]) == (second["id"], 1, 1)
    assert await watcher.next(SIREN) == {"step": 1, "alert": second["id"]}
    two = await recv_until(ws, alert_event("escalated"), timeout=10)
    assert (two["alert"]["id"], two["level"]) == (second["id"], 2)
    assert metric(gw, "gateway_escalation_steps_total") == 3
    await ws.close()
