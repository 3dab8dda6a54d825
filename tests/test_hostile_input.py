"""No input disables a sensor, rewrites an actuator's command or forges a log line (issue 15).

A real gateway process on real mosquitto. Where an application instance must fail, a
`sitecustomize` in the gateway's PYTHONPATH makes the rule engine raise on one value: the
fault a bug would be, in the real process, with everything else as shipped.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import paho.mqtt.client as paho

from gateway.config import load_config
from tests.conftest import (
    ROOT,
    GatewayFactory,
    Service,
    alert_event,
    http_get,
    metric,
    publish,
    recv_json,
    recv_until,
    until,
    ws_connect,
)

BOILER = "sensors/boiler"
APP_ERRORS = 'gateway_mqtt_messages_total{outcome="app_error"}'
BAD = 'gateway_mqtt_messages_total{outcome="bad_payload"}'


def event_of(event: str, rule: str) -> Any:
    return lambda m: alert_event(event)(m) and m["alert"]["rule"] == rule


async def test_a_5000_digit_reading_is_bad_input_and_the_alert_still_clears(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    ws = await ws_connect(gw)
    await recv_json(ws)
    await publish(mosquitto.port, BOILER, '{"temp": {"water": 95}}')
    raised = await recv_until(ws, event_of("raised", "boiler-hot"))
    await publish(mosquitto.port, BOILER, '{"temp": {"water": ' + "1" * 5000 + "}}")
    await publish(mosquitto.port, "zigbee2mqtt/front_door", '{"contact": ' + "1" * 5000 + "}")
    await until(lambda: metric(gw, BAD) == 2, what="both long numbers counted as bad input")
    # The warm alert clears: its rule state was never lost.
    await publish(mosquitto.port, BOILER, '{"temp": {"water": 60}}')
    cleared = await recv_until(ws, event_of("cleared", "boiler-hot"), timeout=10)
    assert cleared["alert"]["id"] == raised["alert"]["id"]
    assert metric(gw, APP_ERRORS) == 0
    assert "payload could not be read (ValueError: Exceeds the limit (4300 digits)" in gw.log
    assert gw.wait_healthy()["status"] == "ok"
    await ws.close()


FAULT = """
import gateway.engine.rules

_on_value = gateway.engine.rules.SensorRules.on_value


def on_value(self, value, now, retained=False, local=True):
    if value == "explode":
        raise RuntimeError("injected fault")
    return _on_value(self, value, now, retained, local)


gateway.engine.rules.SensorRules.on_value = on_value
"""


async def test_a_failing_instance_keeps_its_sensor_and_a_failing_sensor_is_a_loud_fault(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", start=False)
    inject = gw.workdir / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(FAULT)
    gw.env["PYTHONPATH"] = f"{inject}:{ROOT}"
    gw.start()
    ws = await ws_connect(gw)
    await recv_json(ws)
    explode = '{"temp": {"water": "explode"}}'

    # One failure: the instance is started again with its rule state, so the alert still clears.
    await publish(mosquitto.port, BOILER, '{"temp": {"water": 95}}')
    hot = await recv_until(ws, event_of("raised", "boiler-hot"))
    await publish(mosquitto.port, BOILER, explode)
    await until(lambda: metric(gw, APP_ERRORS) == 1, what="the failure counted")
    await publish(mosquitto.port, BOILER, '{"temp": {"water": 60}}')
    cleared = await recv_until(ws, event_of("cleared", "boiler-hot"), timeout=10)
    assert cleared["alert"]["id"] == hot["alert"]["id"]
    assert gw.wait_healthy()["status"] == "ok"  # one failure is logged and counted, not a fault

    # Failing again and again: an alert of its own, and /healthz names the sensor.
    for _ in range(3):
        await publish(mosquitto.port, BOILER, explode)
    fault = (await recv_until(ws, event_of("raised", "gateway:messages-failing"), timeout=10))["alert"]
    assert fault["sensor"] == "boiler" and fault["severity"] == "warning"
    assert fault["message"] == "sensor boiler: messages failing: RuntimeError: injected fault"
    status, health = http_get(f"{gw.url}/healthz")
    assert status == 503 and health["status"] == "degraded"
    assert health["protocols"]["mqtt"]["up"] is False
    assert health["protocols"]["mqtt"]["detail"] == (
        "sensor boiler: messages failing: RuntimeError: injected fault"
    )
    # The other sensors carry on meanwhile.
    await publish(mosquitto.port, "zigbee2mqtt/front_door", '{"contact": false}')
    await recv_until(ws, event_of("raised", "door-opened"))

    # More failures than the five after which its messages used to be dropped for good:
    # the sensor still works, and its fault clears itself.
    for _ in range(4):
        await publish(mosquitto.port, BOILER, explode)
    await until(lambda: metric(gw, APP_ERRORS) == 8, what="eight failures counted")
    await publish(mosquitto.port, BOILER, '{"temp": {"water": 96}}')
    events = {}  # the reading's alert and the fault's clear, in either order
    while len(events) < 2:
        msg = await recv_until(ws, lambda m: m.get("type") == "alert" and m["alert"]["sensor"] == "boiler")
        events[(msg["event"], msg["alert"]["rule"])] = msg["alert"]
    assert events[("raised", "boiler-hot")]["message"] == "Boiler at 96"
    assert events[("cleared", "gateway:messages-failing")]["id"] == fault["id"]
    assert gw.wait_healthy()["status"] == "ok"
    assert metric(gw, 'gateway_mqtt_messages_total{outcome="dropped_dead_app"}') == 0
    # Logged, but not a traceback per failure.
    assert gw.log.count("Traceback") == 1
    assert "MQTT device 'boiler' keeps failing (3 times in a row)" in gw.log
    await ws.close()


PANEL = """
[[sensors]]
id = "panel"
name = "Panel"
zone = "house"
topic = "panel/state"
format = "plain"
availability_topic = "panel/availability"

[[rules]]
id = "panel-alarm"
sensor = "panel"
when = { equals = "alarm" }
message = "{sensor.name}: {value}"
on_raise = [{ topic = "panel/siren/set", payload = '{"state":"ON","why":"{alert.message}"}' }]
on_clear = [
  { topic = "panel/siren/set", payload = '{"state":"OFF","reading":"{alert.value}"}' },
  { topic = "panel/display", payload = "last: {alert.value}" },
]

[[rules]]
id = "panel-offline"
sensor = "panel"
when = { offline = true }
message = "{sensor.name} offline, last said {value}"
"""


async def test_a_sensor_value_cannot_rewrite_a_command_or_forge_a_log_line(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", extra=PANEL)
    ws = await ws_connect(gw)
    await recv_json(ws)
    received: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="siren")
    sub.on_message = lambda c, u, m: loop.call_soon_threadsafe(received.put_nowait, (m.topic, m.payload))
    subscribed = asyncio.Event()
    sub.on_subscribe = lambda *a: loop.call_soon_threadsafe(subscribed.set)
    sub.on_connect = lambda c, *a: c.subscribe([("panel/siren/set", 1), ("panel/display", 1)])
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    injected = 'x","state":"ON'
    forged = "INFO gateway.alerts: alert zzz999 cleared: all clear"
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        await publish(mosquitto.port, "panel/state", "alarm")
        _, payload = await asyncio.wait_for(received.get(), 5)
        assert json.loads(payload) == {"state": "ON", "why": "Panel: alarm"}
        # The value that clears the alert tries to turn the siren's OFF into ON.
        await publish(mosquitto.port, "panel/state", injected)
        got = dict([await asyncio.wait_for(received.get(), 5) for _ in range(2)])
        assert json.loads(got["panel/siren/set"]) == {"state": "OFF", "reading": injected}
        assert got["panel/display"] == b'last: x","state":"ON'  # text: as it came
        # A value with a line of its own, in an alert's message on its way to the log.
        await publish(mosquitto.port, "panel/state", f"ok\n{forged}")
        await publish(mosquitto.port, "panel/availability", "offline")
        offline = await recv_until(ws, event_of("raised", "panel-offline"))
        assert offline["alert"]["message"] == f"Panel offline, last said ok{forged}"
        await until(lambda: f"{offline['alert']['id']} raised" in gw.log, what="the alert's log line")
        assert not any(line.startswith(forged) for line in gw.log.splitlines())
    finally:
        sub.loop_stop()
        sub.disconnect()
    await ws.close()


async def test_a_raise_dropped_by_a_cooldown_is_logged_and_counted(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    extra = PANEL.replace('message = "{sensor.name}: {value}"', 'message = "x"\ncooldown = "1m"')
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", extra=extra)
    for reading in ("alarm", "quiet", "alarm", "quiet", "alarm"):
        await publish(mosquitto.port, "panel/state", reading)
    dropped = 'gateway_cooldown_drops_total{rule="panel-alarm"}'
    await until(lambda: metric(gw, dropped) == 2, what="two dropped raises counted")
    line = "sensor panel: rule panel-alarm matched within 60s of its last raise (cooldown): not raised again"
    assert gw.log.count(line) == 1  # once a minute per rule and sensor
    _, body = http_get(f"{gw.url}/api/alerts?limit=10", token="ops-secret-token")
    assert [a["rule"] for a in body["alerts"]] == ["panel-alarm"]


def test_the_readme_s_door_raises_again_on_a_second_try() -> None:
    config = load_config(str(ROOT / "gateway.example.toml"), env={})
    door = next(rule for rule in config.rules if rule.id == "door-opened")
    assert door.cooldown <= 5  # a first try's second open, a few seconds later, raises again
