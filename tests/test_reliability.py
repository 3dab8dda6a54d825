"""No alert lost or doubled across a crash: QoS 1 in a persistent session, acknowledged once handled."""

from __future__ import annotations

import asyncio
import json
import socket

import paho.mqtt.client as paho

from tests.conftest import (
    GatewayFactory,
    Service,
    alert_event,
    http_get,
    publish,
    recv_json,
    recv_until,
    split_pair,
    until,
    ws_connect,
)

DOOR = "zigbee2mqtt/front_door"


async def test_kill_9_mid_stream_loses_and_doubles_nothing(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    sent = 0
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="door-sensor")
    client.on_socket_open = lambda c, u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()

    def alerts() -> list[dict[str, object]]:
        status, body = http_get(gw.url + "/api/alerts?limit=1000", token="ops-secret-token")
        return body["alerts"] if status == 200 else []

    async def door() -> None:
        # 300 triggers at a sensor's burst pace: open, close, open, ... each open raises, each close clears.
        nonlocal sent
        while sent < 300:
            info = client.publish(DOOR, '{"contact": %s}' % ("false" if sent % 2 == 0 else "true"), qos=1)
            sent += 1
            await asyncio.to_thread(info.wait_for_publish, 5)
            await asyncio.sleep(0.005)

    try:
        stream = asyncio.ensure_future(door())
        await until(lambda: len(alerts()) >= 20, what="the gateway in the middle of the stream")
        gw.kill()  # kill -9 while messages are arriving: no drain, nothing saved on the way out
        assert not stream.done()
        killed_at = sent
        await asyncio.to_thread(gw.start)  # the broker kept what came meanwhile for the session
        await stream
        assert 0 < killed_at < 300 and sent == 300

        def settled() -> list[dict[str, object]] | None:
            rows = alerts()
            return rows if len(rows) >= 150 and all(a["state"] == "cleared" for a in rows) else None

        rows = await until(settled, timeout=30, what="150 alerts, all cleared")
    finally:
        client.loop_stop()
        client.disconnect()
    assert len(rows) == 150  # none lost, none raised twice
    assert len({a["id"] for a in rows}) == 150
    assert {a["rule"] for a in rows} == {"door-opened"}
    assert "ready in" in gw.log


async def test_a_crash_right_after_a_clear_does_not_swallow_the_next_raise(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    ws = await ws_connect(gw)
    await recv_json(ws)
    await publish(mosquitto.port, DOOR, '{"contact": false}')
    await recv_until(ws, alert_event("raised"))
    await asyncio.sleep(1.5)  # past the sensor board's 1 s write-behind: "open" is on disk
    await publish(mosquitto.port, DOOR, '{"contact": true}')
    await recv_until(ws, alert_event("cleared"))
    gw.kill()  # before the board writes "closed" behind: only the clear's own transaction has it
    gw.start()
    ws = await ws_connect(gw)
    await recv_json(ws)
    await publish(mosquitto.port, DOOR, '{"contact": false}')
    raised = await recv_until(ws, alert_event("raised"), timeout=10)
    assert raised["alert"]["message"] == "Front door opened"
    await ws.close()


async def test_a_redis_outage_in_split_mode_heals_and_counts_what_it_lost(
    gateway_factory: GatewayFactory, mosquitto: Service, redis_server: Service
) -> None:
    web, mqtt_only = split_pair(gateway_factory, mosquitto.port, f"redis://127.0.0.1:{redis_server.port}/0")
    ws = await ws_connect(web)
    hello = await recv_json(ws)
    await until(lambda: "ready in" in mqtt_only.log, what="the MQTT process")

    redis_server.stop()  # and it comes back empty: no persistence, no group memberships
    await publish(mosquitto.port, DOOR, '{"contact": false}')
    await until(lambda: "not handed to alerts:" in mqtt_only.log, what="the lost hand-over, logged")
    redis_server.start()
    for gw in (web, mqtt_only):
        await until(lambda gw=gw: "redis is back" in gw.log, timeout=20, what="memberships renewed")

    await publish(mosquitto.port, DOOR, '{"contact": true}')
    cleared = await recv_until(ws, alert_event("cleared"), timeout=10)
    # What the outage kept from the dashboard is in the database: resume brings it.
    await ws.send(json.dumps({"type": "resume", "after": hello["seq"]}))
    replayed = await recv_until(ws, alert_event("raised"))
    assert replayed["alert"]["id"] == cleared["alert"]["id"]
    assert mqtt_only.proc is not None and mqtt_only.proc.poll() is None
    assert web.wait_healthy()["status"] == "ok"
    await ws.close()
