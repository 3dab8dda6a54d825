"""Silences and escalation end to end: real mosquitto, the gateway process, a WebSocket client and an
MQTT watcher of the siren (the rule's actions) and of `gateway/<site>/alerts`."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
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


async def test_a_two_hour_silence_holds_back_every_notification_of_a_flapping_door(
    watched: tuple[Any, Watcher],
) -> None:
    gw, watcher = watched
    ws = await ws_connect(gw)
    assert (await recv_json(ws))["silences"] == []
    await ws.send(json.dumps({"type": "silence", "zone": "house", "for": "2h", "comment": "painting"}))
    created = await recv_until(ws, lambda m: m.get("type") == "silence")
    silence = created["silence"]
    assert created["event"] == "created" and silence["zone"] == "house" and silence["created_by"] == "web:ops"
    announced = await watcher.next("gateway/test/alerts")
    assert announced == {"type": "silence", "event": "created", "silence": silence}
    cycles = 20
    for n in range(cycles):
        await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":false}')
        raised = await recv_until(ws, alert_event("raised"))
        assert raised["alert"]["silenced"] == silence["id"], n
        await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":true}')
        await recv_until(ws, alert_event("cleared"))
    # Still raised and shown everywhere: 20 raises and 20 clears went out on gateway/test/alerts.
    held = metric(gw, 'gateway_notifications_suppressed_total{event="raised"}')
    held += metric(gw, 'gateway_notifications_suppressed_total{event="cleared"}')
    assert held == 2 * cycles
    # The door opens once more and stays open; the silence is removed: it is notified now,
    # and the siren's first command since the silence began is for that alert.
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":false}')
    last = (await recv_until(ws, alert_event("raised")))["alert"]
    await ws.send(json.dumps({"type": "unsilence", "silence": silence["id"]}))
    ended = await recv_until(ws, lambda m: m.get("type") == "silence")
    assert ended["event"] == "ended" and ended["silence"]["id"] == silence["id"]
    unsilenced = await recv_until(ws, alert_event("unsilenced"))
    assert unsilenced["alert"]["id"] == last["id"] and unsilenced["alert"]["silenced"] is None
    assert await watcher.next(SIREN) == {"state": "ON", "alert": last["id"]}
    assert metric(gw, "gateway_silences_active ") == 0
    await ws.close()


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


MODES = """
[[rules]]
id = "hall-motion"
sensor = "front-door"
when = { equals = false }
severity = "warning"
modes = ["night"]
message = "Door opened at night"
"""


def _api(gw: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(gw.url + path, data=data, method=method)
    request.add_header("Authorization", "Bearer ops-secret-token")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_a_switch_that_fell_while_stopped_sets_the_mode_at_start(
    gateway_factory: GatewayFactory,
) -> None:
    # Night begins every day at the minute an hour ago (local time of the machine).
    zone = datetime.now().astimezone().tzinfo
    an_hour_ago = (datetime.now(zone) - timedelta(hours=1)).strftime("%H:%M")
    in_an_hour = (datetime.now(zone) + timedelta(hours=1)).strftime("%H:%M")
    schedules = (
        f'\n[[schedules]]\nmode = "night"\nat = "{an_hour_ago}"\n'
        f'\n[[schedules]]\nmode = "home"\nat = "{in_an_hour}"\n'
    )
    gw = gateway_factory(start=False, extra=MODES + schedules)
    gw.config_path.write_text(
        gw.config_path.read_text().replace("[gateway]\n", '[gateway]\nmodes = ["home", "night"]\n', 1)
    )
    gw.start()
    # First start: the configured mode (the first), whatever the schedule did before.
    status, mode = _api(gw, "GET", "/api/mode")
    assert status == 200 and mode["mode"] == "home" and mode["changed_by"] is None
    assert mode["next_switch"]["mode"] == "home"
    # Set by hand; the rule of the night mode holds back; a stop of two hours (the stored time moved back).
    assert _api(gw, "POST", "/api/mode", {"mode": "home"})[0] == 200
    ws = await ws_connect(gw)
    await recv_json(ws)
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":false}')
    raised = await recv_until(ws, alert_event("raised"))
    assert raised["alert"]["rule"] == "door-opened"  # the mode-less rule; hall-motion held back
    await ws.close()
    assert metric(gw, 'gateway_raises_suppressed_by_mode_total{rule="hall-motion"}') == 1
    assert gw.stop() == 0
    two_hours_ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat(sep=" ")
    with sqlite3.connect(gw.workdir / "var" / "gateway.sqlite3") as db:
        db.execute("UPDATE gateway_sitemode SET changed_at = ?", (two_hours_ago,))
    gw.start()
    status, mode = _api(gw, "GET", "/api/mode")
    assert status == 200 and mode["mode"] == "night" and mode["changed_by"] == "schedule"
    assert mode["changed_at"].startswith(datetime.now(UTC).date().isoformat()[:4])
    assert mode["next_switch"]["mode"] == "home"
