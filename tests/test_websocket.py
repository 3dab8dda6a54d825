"""`/ws/alerts/` (README.md, Protocols) against a real gateway: auth, origin, each message, bad frames."""

from __future__ import annotations

import asyncio
import contextlib
import json

import paho.mqtt.publish as mqtt_publish
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import (
    GatewayFactory,
    alert_event,
    metric,
    publish,
    recv_json,
    recv_until,
    until,
    with_http,
    ws_connect,
)


async def test_bad_or_missing_token_closes_with_4401_before_any_data(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    for token in ("wrong-token-value", None):
        ws = await ws_connect(gw, token=token)
        with pytest.raises(ConnectionClosed) as info:
            await recv_json(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4401


async def test_bearer_header_and_origin_rules(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    # A script without Origin, token in the Authorization header.
    ws = await ws_connect(gw, token=None, additional_headers={"Authorization": "Bearer ops-secret-token"})
    assert (await recv_json(ws))["type"] == "hello"
    await ws.close()
    # A listed origin and the same origin are accepted; a foreign one is refused at the handshake.
    for origin in ("http://dashboard.example", f"http://127.0.0.1:{gw.http_port}"):
        ws = await ws_connect(gw, origin=origin)
        assert (await recv_json(ws))["type"] == "hello"
        await ws.close()
    with pytest.raises(InvalidStatus) as info:
        await ws_connect(gw, origin="http://evil.example")
    assert info.value.response.status_code == 403


async def test_only_the_alerts_path_is_a_websocket(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    base = gw.ws_url.removesuffix("/ws/alerts/")
    for path in ("/ws/other/", "/ws/alerts", "/ws/alerts/extra/", "/"):
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(f"{base}{path}?token=ops-secret-token")
        assert info.value.response.status_code == 403, path
    ws = await websockets.connect(f"{base}/ws/alerts/?token=ops-secret-token")
    assert (await recv_json(ws))["type"] == "hello"
    await ws.close()


async def test_every_message_type_and_bad_frames(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    ws = await ws_connect(gw)
    hello = await recv_json(ws)
    assert set(hello) == {"type", "site", "seq", "alerts", "sensors", "silences", "mode", "modes"}
    assert hello["silences"] == [] and hello["mode"] == "" and hello["modes"] == []  # modes are off
    assert {s["id"] for s in hello["sensors"]} == {"front-door", "boiler"}

    await ws.send('{"type":"ping"}')
    assert await recv_json(ws) == {"type": "pong"}

    bad_frames = [
        ("not json at all", "not valid JSON"),
        ("[1,2,3]", "JSON object"),
        ('{"no":"type"}', "JSON object"),
        ('{"type":"dance"}', "unknown message type"),
        ('{"type":"ack"}', "alert id"),
        ('{"type":"ack","alert":"zzzzzz"}', "no alert with id"),
        ('{"type":"resume","after":"yesterday"}', "whole number"),
        ('{"type":"resume","after":-1}', "whole number"),
        ("[" * 100_000 + "]" * 100_000, "over"),
    ]
    for frame, expected in bad_frames:
        await ws.send(frame)
        reply = await recv_json(ws)
        assert reply["type"] == "error" and expected in reply["error"], (frame[:40], reply)
    await ws.send(b"\x00\x01binary")
    reply = await recv_json(ws)
    assert reply["type"] == "error" and "binary" in reply["error"]

    # The socket is still open and working after all of that.
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":false}')
    seen: dict[str, dict] = {}
    while len(seen) < 2:  # the sensor update and the alert, in either order
        msg = await recv_json(ws)
        seen[msg["type"]] = msg
    raised, sensor = seen["alert"], seen["sensor"]
    assert raised["event"] == "raised" and sensor["sensor"]["id"] == "front-door"
    assert sensor["sensor"]["value"] is False and sensor["sensor"]["online"] is True
    await ws.send(json.dumps({"type": "ack", "alert": raised["alert"]["id"]}))
    await recv_until(ws, alert_event("acknowledged"))
    await ws.send(json.dumps({"type": "ack", "alert": raised["alert"]["id"]}))
    again = await recv_until(ws, lambda m: m["type"] == "error")
    assert "already acknowledged by web:ops" in again["error"]
    await ws.close()


async def test_resume_replays_missed_events_once(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    watcher = await ws_connect(gw)
    await recv_json(watcher)
    ws = await ws_connect(gw)
    hello = await recv_json(ws)
    await ws.close()
    # Missed while away: a raise, and its clear.
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":false}')
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":true}')
    await publish(gw.mqtt_port, "sensors/boiler", '{"temp":{"water":90}}')
    live = [await recv_until(watcher, lambda m: m["type"] == "alert") for _ in range(3)]
    assert sorted(m["seq"] for m in live) == [hello["seq"] + 1, hello["seq"] + 2, hello["seq"] + 3]
    ws = await ws_connect(gw)
    again = await recv_json(ws)
    assert again["type"] == "hello" and again["seq"] == hello["seq"] + 3
    await ws.send(json.dumps({"type": "resume", "after": hello["seq"]}))
    replayed = [await recv_until(ws, lambda m: m["type"] == "alert") for _ in range(3)]
    # In seq order; two sensors are handled concurrently, so the sensors' events may interleave.
    door = [m["event"] for m in replayed if m["alert"]["sensor"] == "front-door"]
    boiler = [m["event"] for m in replayed if m["alert"]["sensor"] == "boiler"]
    assert door == ["raised", "cleared"] and boiler == ["raised"]
    assert [m["seq"] for m in replayed] == [hello["seq"] + 1, hello["seq"] + 2, hello["seq"] + 3]
    assert {m["seq"]: m["alert"] for m in replayed} == {m["seq"]: m["alert"] for m in live}
    # Nothing comes twice, and what happens now comes live, once.
    await ws.send('{"type":"ping"}')
    assert (await recv_until(ws, lambda m: m["type"] in ("pong", "alert")))["type"] == "pong"
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":false}')
    now = await recv_until(ws, lambda m: m["type"] == "alert")
    assert now["seq"] == hello["seq"] + 4 and now["event"] == "raised"
    await ws.send('{"type":"ping"}')
    assert (await recv_until(ws, lambda m: m["type"] in ("pong", "alert")))["type"] == "pong"
    await ws.close()
    await watcher.close()


async def test_connection_cap_refuses_at_the_handshake_and_frees_a_place_on_close(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(start=False)
    config = gw.config_path.read_text()
    gw.config_path.write_text(config.replace("[http]\n", "[http]\nmax_websockets = 2\n", 1))
    gw.start()
    first, second = await ws_connect(gw), await ws_connect(gw)
    for ws in (first, second):
        assert (await recv_json(ws))["type"] == "hello"
    with pytest.raises(InvalidStatus) as info:
        await ws_connect(gw)
    assert info.value.response.status_code == 403
    assert metric(gw, 'gateway_bad_input_total{protocol="websocket",reason="connection_cap"}') == 1
    assert "http.max_websockets reached" in gw.log
    # The two open ones still get alerts, and a closed one frees its place.
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":false}')
    for ws in (first, second):
        assert (await recv_until(ws, alert_event("raised")))["alert"]["sensor"] == "front-door"
    await first.close()
    await until(lambda: metric(gw, "gateway_websocket_connections ") == 1, what="the socket to be closed")
    third = await ws_connect(gw)
    hello = await recv_json(third)
    assert hello["type"] == "hello" and [a["sensor"] for a in hello["alerts"]] == ["front-door"]
    await third.close()
    await second.close()


async def test_flooders_are_closed_with_1008_and_free_their_places(gateway_factory: GatewayFactory) -> None:
    gw = with_http(gateway_factory, "max_websockets = 5")
    flooders = [await ws_connect(gw) for _ in range(5)]
    for ws in flooders:
        assert (await recv_json(ws))["type"] == "hello"

    async def flood(ws: ClientConnection) -> int | None:
        with contextlib.suppress(ConnectionClosed):
            for _ in range(2000):  # FLOOD_CLOSE (1,000) dropped comes well within these
                await ws.send("junk")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        return None if closed.value.rcvd is None else closed.value.rcvd.code

    assert await asyncio.gather(*(flood(ws) for ws in flooders)) == [1008] * 5
    await until(lambda: metric(gw, "gateway_websocket_connections ") == 0, what="the flooders to leave")
    # Every place is free again: five dashboards fit.
    dashboards = [await ws_connect(gw) for _ in range(5)]
    for ws in dashboards:
        assert (await recv_json(ws))["type"] == "hello"
        await ws.close()


async def test_a_frame_over_the_limit_is_closed_with_1009(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    ws = await ws_connect(gw, max_size=None)
    assert (await recv_json(ws))["type"] == "hello"
    await ws.send("x" * 1_000_000)
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    await until(lambda: metric(gw, "gateway_websocket_connections ") == 0, what="the socket to leave")


async def test_a_long_resume_reaches_a_reading_client_whole(gateway_factory: GatewayFactory) -> None:
    # Each event is about 300 bytes: 300 of them are several times what may wait for one client.
    gw = with_http(gateway_factory, "websocket_send_buffer = 16384")
    watcher = await ws_connect(gw)
    start = (await recv_json(watcher))["seq"]
    contact = ("false", "true")
    door = [("zigbee2mqtt/front_door", f'{{"contact":{contact[i % 2]}}}', 1, False) for i in range(300)]
    await asyncio.to_thread(mqtt_publish.multiple, door, hostname="127.0.0.1", port=gw.mqtt_port)
    await recv_until(watcher, lambda m: m.get("seq") == start + 300, timeout=30)

    ws = await ws_connect(gw)
    assert (await recv_json(ws))["seq"] == start + 300
    await ws.send(json.dumps({"type": "resume", "after": start}))
    replayed = [await recv_until(ws, lambda m: m["type"] == "alert") for _ in range(300)]
    assert [m["seq"] for m in replayed] == list(range(start + 1, start + 301))
    await ws.send('{"type":"ping"}')
    assert (await recv_until(ws, lambda m: m["type"] == "pong"))["type"] == "pong"
    assert metric(gw, 'gateway_bad_input_total{protocol="websocket",reason="slow_client"}') == 0
    await ws.close()
    await watcher.close()
