"""The product end to end: mosquitto or the embedded broker, redis-server, the gateway under daphne."""

from __future__ import annotations

import asyncio
import json

import paho.mqtt.client as paho
import pytest

from tests.conftest import (
    GatewayFactory,
    Service,
    alert_event,
    http_get,
    http_request,
    publish,
    recv_json,
    recv_until,
    split_pair,
    until,
    ws_connect,
)


async def _trigger_and_clear(gw, port: int) -> None:
    ws = await ws_connect(gw)
    hello = await recv_json(ws)
    assert hello["type"] == "hello" and hello["site"] == "test"
    await publish(port, "zigbee2mqtt/front_door", '{"contact":false}')
    raised = await recv_until(ws, alert_event("raised"))
    alert = raised["alert"]
    assert alert["rule"] == "door-opened" and alert["state"] == "active"
    assert alert["message"] == "Front door opened" and alert["value"] is False
    assert raised["seq"] > hello["seq"]
    await publish(port, "zigbee2mqtt/front_door", '{"contact":true}')
    cleared = await recv_until(ws, alert_event("cleared"))
    assert cleared["alert"]["id"] == alert["id"] and cleared["alert"]["state"] == "cleared"
    assert cleared["seq"] == raised["seq"] + 1
    await ws.close()


async def test_embedded_broker_trigger_reaches_every_websocket(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    status, health = http_get(f"{gw.url}/healthz")
    assert status == 200 and health["protocols"]["mqtt"]["up"] is True
    sockets = [await ws_connect(gw) for _ in range(3)]
    for ws in sockets:
        assert (await recv_json(ws))["type"] == "hello"
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":false}')
    ids = {(await recv_until(ws, alert_event("raised")))["alert"]["id"] for ws in sockets}
    assert len(ids) == 1
    for ws in sockets:
        await ws.close()
    assert gw.stop() == 0


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_mqtt_to_websocket_on_mosquitto(
    gateway_factory: GatewayFactory, mosquitto: Service, protocol: str
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", protocol=protocol)
    await _trigger_and_clear(gw, mosquitto.port)
    assert f"MQTT {protocol}" in gw.log


async def test_auto_protocol_falls_back_to_311_on_a_311_only_broker(
    gateway_factory: GatewayFactory,
) -> None:
    # A second gateway's embedded broker (amqtt, 3.1.1 only) serves as the old broker.
    host = gateway_factory(name="broker-host")
    gw = gateway_factory(
        mqtt_url=f"mqtt://127.0.0.1:{host.mqtt_port}", protocol="auto", name="client", site="other"
    )
    assert "falling back to 3.1.1" in gw.log or "MQTT 3.1.1" in gw.log
    assert "MQTT 3.1.1" in gw.log


async def test_redis_layer_end_to_end(
    gateway_factory: GatewayFactory, mosquitto: Service, redis_server: Service
) -> None:
    gw = gateway_factory(
        mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", layer=f"redis://127.0.0.1:{redis_server.port}/0"
    )
    ws = await ws_connect(gw)
    await recv_json(ws)
    # Idle past redis-py 8's default 5 s socket timeout: the consumer must survive it (channels_redis#422).
    await asyncio.sleep(6)
    await ws.send('{"type":"ping"}')
    assert (await recv_json(ws)) == {"type": "pong"}
    await ws.close()
    await _trigger_and_clear(gw, mosquitto.port)


async def test_split_processes_over_redis(
    gateway_factory: GatewayFactory, mosquitto: Service, redis_server: Service
) -> None:
    web, mqtt_only = split_pair(gateway_factory, mosquitto.port, f"redis://127.0.0.1:{redis_server.port}/0")
    ws = await ws_connect(web)
    await recv_json(ws)
    await until(lambda: "ready in" in mqtt_only.log, what="the MQTT process")
    await publish(mosquitto.port, "zigbee2mqtt/front_door", '{"contact":false}')
    raised = await recv_until(ws, alert_event("raised"))
    assert raised["alert"]["sensor"] == "front-door"

    # The web process hears sensor readings too, so a dashboard opened later starts from them.
    await publish(mosquitto.port, "sensors/boiler", '{"temp":{"water":55.5}}')
    await recv_until(ws, lambda m: m.get("type") == "sensor" and m["sensor"]["value"] == 55.5)
    late = await ws_connect(web)
    sensors = {s["id"]: s for s in (await recv_json(late))["sensors"]}
    assert sensors["boiler"]["value"] == 55.5 and sensors["boiler"]["online"] is True
    assert [point[1] for point in sensors["boiler"]["recent"]] == [55.5]
    await late.close()
    await ws.close()


async def test_broker_restart_resubscribes(gateway_factory: GatewayFactory, mosquitto: Service) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    ws = await ws_connect(gw)
    await recv_json(ws)
    mosquitto.restart()  # no persistence: the broker forgets our session and subscriptions
    gw.wait_healthy()
    for _ in range(200):
        if gw.log.count("connected to") >= 2:
            break
        await asyncio.sleep(0.05)
    await publish(mosquitto.port, "zigbee2mqtt/front_door", '{"contact":false}')
    raised = await recv_until(ws, alert_event("raised"), timeout=10)
    assert raised["alert"]["rule"] == "door-opened"
    await ws.close()


async def test_message_sent_while_gateway_is_down_is_handled_after_start(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    assert gw.stop() == 0
    # The broker keeps our persistent session's QoS 1 messages while we are away.
    await publish(mosquitto.port, "zigbee2mqtt/front_door", '{"contact":false}', qos=1)
    gw.start()
    for _ in range(100):
        status, body = http_get(f"{gw.url}/api/alerts?state=active", token="ops-secret-token")
        if status == 200 and body["alerts"]:
            break
        await asyncio.sleep(0.05)
    assert status == 200 and [a["rule"] for a in body["alerts"]] == ["door-opened"]
    assert "session resumed" in gw.log


async def test_alert_survives_restart_and_seq_never_goes_back(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    ws = await ws_connect(gw)
    await recv_json(ws)
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":false}')
    raised = await recv_until(ws, alert_event("raised"))
    await ws.close()
    assert gw.stop() == 0
    gw.start()
    ws = await ws_connect(gw)
    hello = await recv_json(ws)
    assert [a["id"] for a in hello["alerts"]] == [raised["alert"]["id"]]
    assert hello["seq"] == raised["seq"]
    sensors = {s["id"]: s for s in hello["sensors"]}
    assert sensors["front-door"]["value"] is False
    # The same state again (a retained replay, a redelivery) raises nothing new; the clear still works.
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":false}')
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":true}')
    cleared = await recv_until(ws, lambda m: m.get("type") == "alert")
    assert cleared["event"] == "cleared" and cleared["seq"] == raised["seq"] + 1
    await ws.close()


async def test_acknowledge_from_websocket_http_and_mqtt(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    watcher = await ws_connect(gw, token="kiosk-secret-token")
    actor = await ws_connect(gw)
    await recv_json(watcher)
    await recv_json(actor)
    port = gw.mqtt_port

    async def raise_one(topic: str, payload: str) -> str:
        await publish(port, topic, payload)
        return (await recv_until(watcher, alert_event("raised")))["alert"]["id"]

    door = await raise_one("zigbee2mqtt/front_door", '{"contact":false}')
    await actor.send(json.dumps({"type": "ack", "alert": door}))
    acked = await recv_until(watcher, alert_event("acknowledged"))
    assert acked["alert"]["id"] == door and acked["alert"]["acknowledged_by"] == "web:ops"
    assert acked["alert"]["acknowledged_at"] is not None

    boiler = await raise_one("sensors/boiler", '{"temp":{"water":85.5}}')
    status, body = http_request("POST", f"{gw.url}/api/alerts/{boiler}/ack", token="ops-secret-token")
    assert status == 200 and body["alert"]["state"] == "acknowledged"
    acked = await recv_until(watcher, alert_event("acknowledged"))
    assert acked["alert"]["id"] == boiler and acked["alert"]["acknowledged_by"] == "web:ops"

    # Clear both, raise the door again, acknowledge it over MQTT.
    await publish(port, "zigbee2mqtt/front_door", '{"contact":true}')
    await publish(port, "sensors/boiler", '{"temp":{"water":60}}')
    door2 = await raise_one("zigbee2mqtt/front_door", '{"contact":false}')
    await publish(port, "gateway/test/ack", door2)
    acked = await recv_until(watcher, alert_event("acknowledged"))
    assert acked["alert"]["id"] == door2 and acked["alert"]["acknowledged_by"] == "mqtt"

    status, body = http_request("POST", f"{gw.url}/api/alerts/nosuch/ack", token="ops-secret-token")
    assert status == 404 and "nosuch" in body["error"]
    status, _ = http_request("POST", f"{gw.url}/api/alerts/{door2}/ack")
    assert status == 401
    await watcher.close()
    await actor.close()


async def test_alerts_and_actions_published_over_mqtt(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    received: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="watcher")
    sub.on_message = lambda c, u, m: loop.call_soon_threadsafe(
        received.put_nowait, (m.topic, m.payload, m.retain)
    )
    subscribed = asyncio.Event()
    sub.on_subscribe = lambda *a: loop.call_soon_threadsafe(subscribed.set)
    sub.on_connect = lambda c, *a: c.subscribe([("gateway/test/#", 1), ("zigbee2mqtt/siren/set", 1)])
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        status = await asyncio.wait_for(received.get(), 5)
        assert status == ("gateway/test/status", b"online", True)
        await publish(mosquitto.port, "zigbee2mqtt/front_door", '{"contact":false}')
        got = {}
        while len(got) < 2:
            topic, payload, _ = await asyncio.wait_for(received.get(), 5)
            got[topic] = payload
        envelope = json.loads(got["gateway/test/alerts"])
        assert envelope["type"] == "alert" and envelope["event"] == "raised"
        siren = json.loads(got["zigbee2mqtt/siren/set"])
        assert siren == {"state": "ON", "alert": envelope["alert"]["id"]}
        assert gw.stop() == 0
        while True:
            topic, payload, _ = await asyncio.wait_for(received.get(), 5)
            if topic == "gateway/test/status":
                assert payload == b"offline"
                break
    finally:
        sub.loop_stop()
        sub.disconnect()


async def test_postgres_database(gateway_factory: GatewayFactory) -> None:
    import psycopg  # installed by the README's test command

    name = f"gateway_test_{abs(hash(asyncio.get_running_loop())) % 10**8}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        gw = gateway_factory(database=f"postgres://postgres@127.0.0.1:5432/{name}")
        await _trigger_and_clear(gw, gw.mqtt_port)
        gw.stop()
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}") as conn:
            states = conn.execute("select state from gateway_alert").fetchall()
        assert states == [("cleared",)]
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_shared_group_on_mqtt_311_is_reported(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(start=False)  # the embedded broker speaks 3.1.1 only
    text = gw.config_path.read_text().replace('protocol = "auto"', 'protocol = "auto"\nshared_group = "edge"')
    gw.config_path.write_text(text)
    gw.start()
    assert "mqtt.shared_group is ignored on MQTT 3.1.1" in gw.log
    ws = await ws_connect(gw)
    await recv_json(ws)
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":false}')
    assert (await recv_until(ws, alert_event("raised")))["alert"]["rule"] == "door-opened"
    await ws.close()
