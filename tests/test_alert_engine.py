"""The alert engine end to end on real mosquitto: every format and availability style, expire_after,
zone rules, flapping, retained replays, restart persistence and SIGHUP reload."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

from tests.conftest import (
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

FORMATS = """
[[sensors]]
id = "hall-door"
name = "Hall door"
zone = "hall"
topic = "zigbee2mqtt/hall_door"
format = "zigbee2mqtt"
field = "contact"

[[sensors]]
id = "water"
name = "Water heater"
zone = "hall"
topic = "tele/heater/SENSOR"
format = "tasmota"
field = "DS18B20.Temperature"

[[sensors]]
id = "plug"
name = "Freezer plug"
zone = "kitchen"
topic = "tele/plug/STATE"
format = "tasmota"
field = "POWER"

[[sensors]]
id = "tank"
name = "Rain tank"
zone = "garden"
topic = "garden/tank"
format = "json"
field = "level.pct"

[[sensors]]
id = "garage"
name = "Garage"
zone = "garden"
topic = "esp32/garage/temp"
format = "plain"

[[rules]]
id = "hall-door-open"
sensor = "hall-door"
when = { equals = false }
clear = { equals = true }
message = "{sensor.name} open"

[[rules]]
id = "hall-offline"
zone = "hall"
when = { offline = true }
severity = "info"
message = "{sensor.name} ({sensor.zone}) went offline"

[[rules]]
id = "water-hot"
sensor = "water"
when = { above = 70 }
clear = { below = 65 }
message = "{sensor.name} at {value}"

[[rules]]
id = "plug-off"
sensor = "plug"
when = { equals = "OFF" }
clear = { equals = true }
severity = "critical"
message = "{sensor.name} switched off"

[[rules]]
id = "tank-low"
sensor = "tank"
when = { below = 10 }
message = "{sensor.name} at {value}%"

[[rules]]
id = "garage-hot"
sensor = "garage"
when = { above = 40 }
message = "{sensor.name} at {value}"
"""


async def raised(ws: Any, rule: str, timeout: float = 5.0) -> dict[str, Any]:
    msg = await recv_until(ws, lambda m: alert_event("raised")(m) and m["alert"]["rule"] == rule, timeout)
    return msg["alert"]  # type: ignore[no-any-return]


async def event_of(ws: Any, event: str, rule: str, sensor: str | None = None) -> dict[str, Any]:
    def match(m: dict[str, Any]) -> bool:
        return alert_event(event)(m) and m["alert"]["rule"] == rule and sensor in (None, m["alert"]["sensor"])

    return (await recv_until(ws, match))["alert"]  # type: ignore[no-any-return]


async def test_every_format_and_availability_style(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", extra=FORMATS)
    port = mosquitto.port
    ws = await ws_connect(gw)
    await recv_json(ws)

    # Zigbee2MQTT: JSON state, availability as a string and as {"state": …}.
    await publish(port, "zigbee2mqtt/hall_door", '{"contact":false,"battery":97,"linkquality":120}')
    assert (await raised(ws, "hall-door-open"))["message"] == "Hall door open"
    await publish(port, "zigbee2mqtt/hall_door/availability", "offline")
    offline = await raised(ws, "hall-offline")
    assert offline["message"] == "Hall door (hall) went offline" and offline["severity"] == "info"
    await publish(port, "zigbee2mqtt/hall_door/availability", '{"state":"online"}')
    assert (await event_of(ws, "cleared", "hall-offline"))["sensor"] == "hall-door"
    await publish(port, "zigbee2mqtt/hall_door/availability", '{"state":"offline"}')
    await event_of(ws, "raised", "hall-offline", "hall-door")

    # Tasmota: tele/<t>/SENSOR keyed by driver, LWT availability (the zone rule covers it too).
    await publish(port, "tele/heater/SENSOR", '{"Time":"2026-11-23T10:00:00","DS18B20":{"Temperature":72.5}}')
    assert (await raised(ws, "water-hot"))["message"] == "Water heater at 72.5"
    await publish(port, "tele/heater/LWT", "Offline")
    assert (await event_of(ws, "raised", "hall-offline", "water"))["zone"] == "hall"
    await publish(port, "tele/heater/LWT", "Online")
    await event_of(ws, "cleared", "hall-offline", "water")

    # Tasmota relay: tele/<t>/STATE, and stat/<t>/RESULT answering a command.
    await publish(port, "tele/plug/STATE", '{"Time":"2026-11-23T10:00:00","POWER":"ON","Wifi":{"RSSI":70}}')
    await publish(port, "stat/plug/RESULT", '{"Dimmer":40}')  # not about POWER: ignored quietly
    await publish(port, "stat/plug/RESULT", '{"POWER":"OFF"}')
    assert (await raised(ws, "plug-off"))["severity"] == "critical"
    await publish(port, "stat/plug/RESULT", '{"POWER":"ON"}')
    await event_of(ws, "cleared", "plug-off")

    # json with a dotted path, plain numbers.
    await publish(port, "garden/tank", '{"level":{"pct":8,"litres":160}}')
    assert (await raised(ws, "tank-low"))["message"] == "Rain tank at 8%"
    await publish(port, "esp32/garage/temp", "41.5")
    assert (await raised(ws, "garage-hot"))["value"] == 41.5

    # What does not fit is counted and raises nothing; the sensors go on.
    bad_before = metric(gw, 'gateway_mqtt_messages_total{outcome="bad_payload"}')
    for payload in ("{not json", '{"level":{"pct":[8]}}', '{"level":NaN}', ""):
        await publish(port, "garden/tank", payload)
    await publish(port, "esp32/garage/temp", "hot")
    await publish(port, "esp32/garage/temp", "45")
    sensor = await recv_until(ws, lambda m: m.get("type") == "sensor" and m["sensor"]["value"] == 45)
    assert sensor["sensor"]["online"] is True
    assert metric(gw, 'gateway_mqtt_messages_total{outcome="bad_payload"}') - bad_before == 4
    assert metric(gw, 'gateway_mqtt_messages_total{outcome="ignored"}') == 1
    _, body = http_get(f"{gw.url}/api/alerts?state=active&limit=100", token="ops-secret-token")
    assert sorted(a["rule"] for a in body["alerts"]) == [
        "garage-hot",
        "hall-door-open",
        "hall-offline",
        "tank-low",
        "water-hot",
    ]
    assert "sensor tank: ignored a message on garden/tank" in gw.log
    await ws.close()


async def test_expire_after_takes_silent_sensors_offline(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    extra = """
[[sensors]]
id = "leak"
name = "Leak sensor"
zone = "cellar"
topic = "zigbee2mqtt/leak"
format = "zigbee2mqtt"
field = "water_leak"
expire_after = "1500ms"

[[rules]]
id = "leak-silent"
sensor = "leak"
when = { offline = true }
message = "{sensor.name} silent"
"""
    started = time.monotonic()
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", extra=extra)
    ws = await ws_connect(gw)
    await recv_json(ws)
    # It never reported since the start: offline after expire_after.
    alert = await raised(ws, "leak-silent", timeout=10)
    assert time.monotonic() - started >= 1.5 and alert["message"] == "Leak sensor silent"
    await publish(mosquitto.port, "zigbee2mqtt/leak", '{"water_leak":false,"battery":100}')
    await event_of(ws, "cleared", "leak-silent")
    sensor = await recv_until(ws, lambda m: m.get("type") == "sensor" and m["sensor"]["id"] == "leak")
    assert sensor["sensor"]["online"] is True
    # Silent again: offline again, 1.5 s after the last message (the alert and the sensor event).
    seen: dict[str, dict[str, Any]] = {}
    while len(seen) < 2:
        msg = await recv_json(ws)
        if alert_event("raised")(msg) and msg["alert"]["rule"] == "leak-silent":
            seen["alert"] = msg
        elif msg.get("type") == "sensor" and msg["sensor"]["id"] == "leak" and not msg["sensor"]["online"]:
            seen["sensor"] = msg
    assert seen["sensor"]["sensor"]["value"] is False  # the last value stays known
    await ws.close()


async def test_a_flapping_sensor_raises_one_alert(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    extra = """
[[sensors]]
id = "gate"
name = "Gate"
topic = "zigbee2mqtt/gate"
format = "zigbee2mqtt"
field = "contact"

[[rules]]
id = "gate-open"
sensor = "gate"
when = { equals = false }
clear = { equals = true }
cooldown = "1m"
"""
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", extra=extra)
    ws = await ws_connect(gw)
    await recv_json(ws)
    ok_before = metric(gw, 'gateway_mqtt_messages_total{outcome="ok"}')
    sent = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(100):  # ten a second for ten seconds
        await publish(mosquitto.port, "zigbee2mqtt/gate", json.dumps({"contact": i % 2 == 1}))
        sent += 1
        await asyncio.sleep(max(0.0, start + (i + 1) / 10 - loop.time()))

    ok = 'gateway_mqtt_messages_total{outcome="ok"}'
    await until(lambda: metric(gw, ok) - ok_before >= sent, timeout=10, what="all messages handled")
    events: list[str] = []
    sensor_events = []
    while True:  # everything was handled: what the dashboard got is in its buffer, or soon
        try:
            msg = await recv_json(ws, timeout=0.5)
        except TimeoutError:
            break
        if msg["type"] == "alert":
            events.append(msg["event"])
        elif msg["type"] == "sensor" and msg["sensor"]["id"] == "gate":
            sensor_events.append(msg["sensor"]["value"])
    assert events == ["raised", "cleared"]  # not fifty raises
    # Dashboards hear of the gate at most twice a second, and the last reading arrives.
    assert 5 <= len(sensor_events) <= 23 and sensor_events[-1] is True
    _, body = http_get(f"{gw.url}/api/alerts?limit=100", token="ops-secret-token")
    assert len([a for a in body["alerts"] if a["rule"] == "gate-open"]) == 1
    await ws.close()


async def test_state_survives_restart_and_retained_replays_raise_nothing(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    ws = await ws_connect(gw)
    await recv_json(ws)
    await publish(mosquitto.port, "zigbee2mqtt/front_door", '{"contact":false}', retain=True)
    door = await raised(ws, "door-opened")
    await publish(mosquitto.port, "sensors/boiler", '{"temp":{"water":75}}', retain=True)  # below 80
    await recv_until(ws, lambda m: m.get("type") == "sensor" and m["sensor"]["value"] == 75)
    await ws.close()
    assert gw.stop() == 0

    gw.start()  # the broker replays both retained messages at the new subscription
    ws = await ws_connect(gw)
    hello = await recv_json(ws)
    sensors = {s["id"]: s for s in hello["sensors"]}
    assert (sensors["boiler"]["value"], sensors["boiler"]["online"]) == (75, True)
    assert (sensors["front-door"]["value"], sensors["front-door"]["online"]) == (False, True)
    assert [a["id"] for a in hello["alerts"]] == [door["id"]]
    # The replays are handled and raise nothing; a real change still does, as the next event.
    await publish(mosquitto.port, "sensors/boiler", '{"temp":{"water":85}}')
    first = await recv_until(ws, lambda m: m.get("type") == "alert")
    assert (first["event"], first["alert"]["rule"], first["alert"]["value"]) == ("raised", "boiler-hot", 85)
    assert first["seq"] == hello["seq"] + 1
    _, body = http_get(f"{gw.url}/api/alerts?limit=100", token="ops-secret-token")
    assert sorted(a["rule"] for a in body["alerts"]) == ["boiler-hot", "door-opened"]
    assert metric(gw, 'gateway_alerts_total{event="raised"}') == 1  # this process: the boiler only
    await ws.close()


RELOADED = """
[[sensors]]
id = "cellar-leak"
name = "Cellar leak"
zone = "cellar"
topic = "zigbee2mqtt/cellar_leak"
format = "zigbee2mqtt"
field = "water_leak"

[[rules]]
id = "leak"
sensor = "cellar-leak"
when = { equals = true }
clear = { equals = false }
severity = "critical"
message = "Water in the {sensor.zone}"
"""


async def test_sighup_reloads_rules_and_sensors_and_refuses_a_bad_config(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    ws = await ws_connect(gw)
    await recv_json(ws)
    await publish(mosquitto.port, "zigbee2mqtt/front_door", '{"contact":false}')
    door = await raised(ws, "door-opened")
    original = gw.config_path.read_text()

    async def reload(text: str, expect: str) -> None:
        gw.config_path.write_text(text)
        before = gw.log.count(expect)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        await until(lambda: gw.log.count(expect) > before, timeout=10, what=f"{expect!r} in the log")

    # A new sensor and rule, a lower boiler threshold, a new token, a new port (needs a restart).
    changed = original.replace("when = { above = 80 }", "when = { above = 60 }")
    changed = changed.replace('kiosk = "kiosk-secret-token"', 'wall = "wall-secret-token-1"')
    changed = changed.replace(f"127.0.0.1:{gw.http_port}", "127.0.0.1:1")
    assert changed != original
    await reload(changed + RELOADED, "config reloaded")
    assert "not applied until a restart: http.bind" in gw.log

    await publish(mosquitto.port, "zigbee2mqtt/cellar_leak", '{"water_leak":true}')
    assert (await raised(ws, "leak"))["message"] == "Water in the cellar"
    await publish(mosquitto.port, "sensors/boiler", '{"temp":{"water":65}}')
    assert (await raised(ws, "boiler-hot"))["value"] == 65
    # The door alert raised before the reload is still open and still clears.
    await publish(mosquitto.port, "zigbee2mqtt/front_door", '{"contact":true}')
    assert (await event_of(ws, "cleared", "door-opened"))["id"] == door["id"]
    assert http_get(f"{gw.url}/api/alerts", token="wall-secret-token-1")[0] == 200
    assert http_get(f"{gw.url}/api/alerts", token="kiosk-secret-token")[0] == 401

    # A broken config is refused, naming the key; the running one goes on.
    await reload(
        changed + RELOADED + '\n[[rules]]\nid = "x"\nsensor = "nope"\nwhen = { above = 1 }\n', "refused"
    )
    assert "rules[x].sensor: no sensor with id 'nope'" in gw.log
    await publish(mosquitto.port, "zigbee2mqtt/cellar_leak", '{"water_leak":false}')
    await event_of(ws, "cleared", "leak")

    # Removing the sensor again: its topic is no longer handled.
    await reload(original, "config reloaded")
    await publish(mosquitto.port, "zigbee2mqtt/cellar_leak", '{"water_leak":true}')
    await publish(mosquitto.port, "zigbee2mqtt/front_door", '{"contact":false}')
    assert (await raised(ws, "door-opened"))["sensor"] == "front-door"
    _, body = http_get(f"{gw.url}/api/alerts?state=active", token="ops-secret-token")
    assert "leak" not in [a["rule"] for a in body["alerts"]]
    await ws.close()
