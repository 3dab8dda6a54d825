"""Discovery end to end: real mosquitto, the gateway under daphne; devices appear and vanish live."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt.client as paho
import pytest

from tests.conftest import (
    GatewayFactory,
    GatewayProcess,
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
from tests.discovery_messages import (
    COORDINATOR_2X,
    ESPHOME_TEMPERATURE,
    FRONT_DOOR_2X,
    LEAK_2X,
    PLUG_2X,
    TASMOTA_RELAY,
    TASMOTA_TEMPERATURE,
    payload,
)
from tests.telegram_standin import BotApiStandin
from tests.test_telegram import ALICE, TOKEN, say, start, telegram_toml, to_chat

DISCOVERY = """
[discovery]
zigbee2mqtt = "zigbee2mqtt"
homeassistant = "homeassistant"
default_rules = true
"""


def sensors(gw: GatewayProcess) -> dict[str, dict[str, Any]]:
    status, body = http_get(f"{gw.url}/api/sensors", "ops-secret-token")
    assert status == 200
    return {s["id"]: s for s in body["sensors"]}


@pytest.fixture
async def standin() -> AsyncIterator[BotApiStandin]:
    async with BotApiStandin(token=TOKEN) as api:
        yield api


@pytest.fixture
async def site_alerts(mosquitto: Service) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    """What the gateway publishes on gateway/test/alerts."""
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="alerts-watcher")
    sub.on_message = lambda c, u, m: loop.call_soon_threadsafe(received.put_nowait, json.loads(m.payload))
    subscribed = asyncio.Event()
    sub.on_subscribe = lambda *a: loop.call_soon_threadsafe(subscribed.set)
    sub.on_connect = lambda c, *a: c.subscribe("gateway/test/alerts", 1)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        yield received
    finally:
        sub.loop_stop()
        sub.disconnect()


async def test_a_discovered_sensor_is_shown_only_once_its_topic_is_subscribed(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    # Its stored state is read before it is shown: while PostgreSQL holds that read (the table
    # locked), the sensor must not be listed, since a reading sent to a listed sensor whose topic
    # is not subscribed yet is lost.
    import psycopg  # installed with the test extras

    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"gateway_discovery_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        gw = gateway_factory(
            mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}",
            extra=DISCOVERY,
            database=url.replace("postgresql", "postgres"),
        )
        with psycopg.connect(url) as locker:
            locker.execute("LOCK TABLE gateway_sensorstate IN ACCESS EXCLUSIVE MODE")
            await publish(
                mosquitto.port, "zigbee2mqtt/bridge/devices", payload([COORDINATOR_2X, PLUG_2X]), retain=True
            )
            await until(lambda: _waiting_on_a_lock(url), what="the gateway's read waiting on the lock")
            assert "Kitchen_plug.power" not in sensors(gw)
        await until(lambda: "Kitchen_plug.power" in sensors(gw), what="the plug, once read")
        await publish(mosquitto.port, "zigbee2mqtt/Kitchen/plug", '{"state":"ON","power":12.5,"energy":3.25}')
        await until(lambda: sensors(gw)["Kitchen_plug.power"]["value"] == 12.5, what="the plug's power")
        assert gw.stop() == 0
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _waiting_on_a_lock(url: str) -> bool:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query ILIKE '%gateway_sensorstate%'"
        ).fetchone()
    return bool(rows and rows[0])


async def test_zigbee2mqtt_leak_sensor_appears_alerts_and_vanishes(
    gateway_factory: GatewayFactory, mosquitto: Service, site_alerts: asyncio.Queue[dict[str, Any]]
) -> None:
    port = mosquitto.port
    await publish(
        port, "zigbee2mqtt/bridge/devices", payload([COORDINATOR_2X, LEAK_2X, FRONT_DOOR_2X]), retain=True
    )
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{port}", extra=DISCOVERY)
    found = await until(
        lambda: "Bathroom_leak.water_leak" in sensors(gw) and sensors(gw), what="the leak sensor"
    )
    leak = found["Bathroom_leak.water_leak"]
    assert (leak["name"], leak["zone"], leak["device_class"]) == (
        "Bathroom leak water leak",
        "zigbee",
        "moisture",
    )
    assert found["Bathroom_leak.battery"]["unit"] == "%"
    # The configured front door reads its topic and field; the bridge's other property is added.
    assert "front_door.contact" not in found and "front-door" in found and "front_door.battery" in found

    ws = await ws_connect(gw)
    hello = await recv_json(ws)
    assert "Bathroom_leak.water_leak" in {s["id"] for s in hello["sensors"]}
    await publish(port, "zigbee2mqtt/Bathroom leak", '{"water_leak":true,"battery":91,"battery_low":false}')
    raised = (await recv_until(ws, alert_event("raised")))["alert"]
    assert (raised["sensor"], raised["severity"], raised["display"]) == (
        "Bathroom_leak.water_leak",
        "critical",
        "wet",
    )
    assert raised["message"] == "Bathroom leak water leak: water leak"
    envelope = await asyncio.wait_for(site_alerts.get(), 5)
    assert (envelope["event"], envelope["alert"]["id"]) == ("raised", raised["id"])
    await publish(port, "zigbee2mqtt/Bathroom leak", '{"water_leak":false,"battery":91,"battery_low":false}')
    cleared = (await recv_until(ws, alert_event("cleared")))["alert"]
    assert (cleared["id"], cleared["display"]) == (raised["id"], "dry")
    # Offline, as a configured sensor is: one warning for the device.
    await publish(port, "zigbee2mqtt/Bathroom leak/availability", '{"state":"offline"}')
    offline = (await recv_until(ws, alert_event("raised")))["alert"]
    assert (offline["rule"], offline["severity"]) == ("Bathroom_leak.water_leak.offline", "warning")

    # A malformed list is counted and skipped: what the last good one gave stays.
    await publish(port, "zigbee2mqtt/bridge/devices", b'{"devices": "not a list"}')
    await until(lambda: metric(gw, 'gateway_bad_input_total{protocol="mqtt",reason="discovery"}') == 1)
    assert "Bathroom_leak.water_leak" in sensors(gw)
    assert "discovery: skipped on zigbee2mqtt/bridge/devices: bridge/devices is dict" in gw.log

    # The device leaves the network: the bridge's list comes again without it.
    await publish(port, "zigbee2mqtt/bridge/devices", payload([COORDINATOR_2X, PLUG_2X]), retain=True)
    found = await until(lambda: "Bathroom_leak.water_leak" not in sensors(gw) and sensors(gw), what="it gone")
    # An open dashboard is told at once: the list of sensors comes without the device.
    listed = await recv_until(ws, lambda m: m.get("type") == "sensors", timeout=10)
    ids = {s["id"] for s in listed["sensors"]}
    assert (
        "Kitchen_plug.power" in ids and "front-door" in ids and not any(i.startswith("Bathroom") for i in ids)
    )
    await ws.close()
    assert "Kitchen_plug.power" in found and not any(i.startswith("Bathroom_leak") for i in found)
    await publish(port, "zigbee2mqtt/Kitchen/plug", '{"state":"ON","power":12.5,"energy":3.25}')
    await until(lambda: sensors(gw)["Kitchen_plug.power"]["value"] == 12.5, what="the plug's power")
    # A restart: the retained list brings the devices again, with their last state.
    assert gw.stop() == 0
    gw.start()
    found = await until(lambda: "Kitchen_plug.power" in sensors(gw) and sensors(gw), what="the plug again")
    assert (found["Kitchen_plug.power"]["display"], found["Kitchen_plug.energy"]["display"]) == (
        "12.5 W",
        "3.25 kWh",
    )


async def test_home_assistant_configs_appear_read_and_vanish(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    port = mosquitto.port
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{port}", extra=DISCOVERY)
    ws = await ws_connect(gw)
    await recv_json(ws)  # hello
    topic, config = ESPHOME_TEMPERATURE
    await publish(port, topic, payload(config), retain=True)
    await publish(port, TASMOTA_TEMPERATURE[0], payload(TASMOTA_TEMPERATURE[1]), retain=True)
    await publish(port, TASMOTA_RELAY[0], payload(TASMOTA_RELAY[1]), retain=True)  # not read: skipped
    await publish(port, "homeassistant/sensor/broken/config", b'{"name": "no state topic"}', retain=True)
    await until(lambda: "A1B2C3_AM2301_Temperature" in sensors(gw), what="the Tasmota sensor")
    esp = sensors(gw)["ESPsensorlivingroom_temperature"]
    assert (esp["name"], esp["zone"], esp["unit"]) == ("livingroom Temperature", "Living_room", "°C")

    await publish(port, "livingroom/sensor/livingroom_temperature/state", "21.50")
    tile = await recv_until(
        ws, lambda m: m.get("type") == "sensor" and m["sensor"]["id"] == "ESPsensorlivingroom_temperature"
    )
    assert (tile["sensor"]["value"], tile["sensor"]["display"]) == (21.5, "21.5 °C")
    await publish(
        port, "tele/tasmota_A1B2C3/SENSOR", '{"Time":"2024-05-01T10:00:00","AM2301":{"Temperature":-3.2}}'
    )
    tile = await recv_until(
        ws, lambda m: m.get("type") == "sensor" and m["sensor"]["id"] == "A1B2C3_AM2301_Temperature"
    )
    assert tile["sensor"]["display"] == "-3.2 °C"
    await publish(port, "tele/tasmota_A1B2C3/LWT", "Offline", retain=True)
    tile = await recv_until(
        ws, lambda m: m.get("type") == "sensor" and m["sensor"]["id"] == "A1B2C3_AM2301_Temperature"
    )
    assert tile["sensor"]["online"] is False
    assert metric(gw, 'gateway_bad_input_total{protocol="mqtt",reason="discovery"}') == 1
    assert "switch on homeassistant/switch/A1B2C3_RL_1/config and others like it are skipped" in gw.log

    # A reload (SIGHUP) of the file keeps what was discovered.
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    await until(lambda: "config reloaded" in gw.log, what="the reload")
    assert {"ESPsensorlivingroom_temperature", "A1B2C3_AM2301_Temperature"} <= set(sensors(gw))

    # An empty config removes the entity.
    await publish(port, topic, b"", retain=True)
    await until(lambda: "ESPsensorlivingroom_temperature" not in sensors(gw), what="the ESPHome sensor gone")
    assert "A1B2C3_AM2301_Temperature" in sensors(gw)
    await ws.close()


async def test_discovered_leak_reaches_telegram(
    gateway_factory: GatewayFactory, mosquitto: Service, standin: BotApiStandin
) -> None:
    port = mosquitto.port
    await publish(port, "zigbee2mqtt/bridge/devices", payload([COORDINATOR_2X, LEAK_2X]), retain=True)
    extra = DISCOVERY + telegram_toml(standin, [ALICE])
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{port}", extra=extra, start=False)
    await start(gw)
    await until(lambda: "Bathroom_leak.water_leak" in sensors(gw), what="the leak sensor")
    assert "zone zigbee" in await say(standin, ALICE, "/subscribe zigbee")
    before = len(to_chat(standin, ALICE))
    await publish(port, "zigbee2mqtt/Bathroom leak", '{"water_leak":true}')
    sent = await standin.wait_sent(before + 1, timeout=15, method="sendMessage", chat_id=ALICE)
    assert "Bathroom leak water leak: water leak" in sent[-1]["text"] and "wet" in sent[-1]["text"]


async def test_split_mode_web_process_shows_what_the_mqtt_process_discovered(
    gateway_factory: GatewayFactory, mosquitto: Service, redis_server: Service
) -> None:
    port, layer = mosquitto.port, f"redis://127.0.0.1:{redis_server.port}/0"
    await publish(port, "zigbee2mqtt/bridge/devices", payload([COORDINATOR_2X, LEAK_2X]), retain=True)
    web = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{port}", layer=layer, extra=DISCOVERY, start=False)
    mqtt_only = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{port}", layer=layer, start=False, name="mq")
    mqtt_only.config_path.write_text(web.config_path.read_text())
    # The MQTT process has found the devices before the web process starts: the web process asks.
    mqtt_only.start(protocols=("mqtt",), wait=False)
    await until(
        lambda: "discovery: 3 sensors discovered" in mqtt_only.log, what="the MQTT process's discovery"
    )
    web.start(protocols=("web",))
    await until(lambda: "Bathroom_leak.water_leak" in sensors(web), what="the leak sensor on the web process")
    ws = await ws_connect(web)
    hello = await recv_json(ws)
    assert "Bathroom_leak.water_leak" in {s["id"] for s in hello["sensors"]}
    await publish(port, "zigbee2mqtt/Bathroom leak", '{"water_leak":true}')
    raised = (await recv_until(ws, alert_event("raised")))["alert"]
    assert (raised["sensor"], raised["severity"]) == ("Bathroom_leak.water_leak", "critical")
    await ws.close()
    # The message carried one of the device's properties: the others are not bad input.
    assert "not found" not in mqtt_only.log
    # A change reaches it too.
    await publish(port, "zigbee2mqtt/bridge/devices", payload([COORDINATOR_2X, PLUG_2X]), retain=True)
    await until(lambda: "Kitchen_plug.power" in sensors(web), what="the plug on the web process")
    assert "Bathroom_leak.water_leak" not in sensors(web)
