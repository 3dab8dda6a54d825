"""No alert lost or doubled across a crash: QoS 1 in a persistent session, acknowledged once handled."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sqlite3
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from websockets.exceptions import ConnectionClosed

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
    # The web process restarts its sockets (4012): a dashboard reconnects and resumes from its seq.
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4012
    ws = await ws_connect(web)
    await recv_json(ws)
    await ws.send(json.dumps({"type": "resume", "after": hello["seq"]}))
    replayed = await recv_until(ws, alert_event("raised"))  # what the outage kept from it
    assert replayed["alert"]["message"] == "Front door opened"

    await publish(mosquitto.port, DOOR, '{"contact": true}')
    cleared = await recv_until(ws, alert_event("cleared"), timeout=10)
    assert cleared["alert"]["id"] == replayed["alert"]["id"]
    assert mqtt_only.proc is not None and mqtt_only.proc.poll() is None
    assert web.wait_healthy()["status"] == "ok"
    await ws.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def never_reading_client(gw: GatewayProcess) -> socket.socket:
    """A WebSocket client that completes the handshake, then never reads again (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", gw.http_port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/alerts/?token=ops-secret-token HTTP/1.1\r\nHost: 127.0.0.1:{gw.http_port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert sock.recv(12) == b"HTTP/1.1 101"
    return sock


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client's frame, masked as RFC 6455 requires."""
    mask = os.urandom(4)
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    head += bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frame(sock: socket.socket) -> tuple[int, bytes]:
    """The next frame from the server: (opcode, payload)."""

    def take(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        return data

    first, second = take(2)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(take(2), "big")
    elif size == 127:
        size = int.from_bytes(take(8), "big")
    return first & 0x0F, take(size)


def test_websocket_text_is_checked_as_utf8_across_fragments(gateway_factory: GatewayFactory) -> None:
    # autobahn's native validator and unmasker (protocols._autobahn.compiled_nvx), on real frames.
    gw = gateway_factory()
    sock = never_reading_client(gw)
    sock.settimeout(10)
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert json.loads(server_frame(sock)[1])["type"] == "hello"
    # A 300-byte message in two fragments, cut inside a two-byte character: one message, answered.
    text = json.dumps({"type": "ping", "note": "gr\u00fc\u00df " * 50}, ensure_ascii=False).encode()
    cut = text.index("\u00fc".encode()) + 1
    sock.sendall(client_frame(0x1, text[:cut], fin=False) + client_frame(0x0, text[cut:]))
    assert server_frame(sock) == (0x1, b'{"type":"pong"}')
    # Text that is not UTF-8: the connection is closed with 1007 (invalid frame payload data).
    sock.sendall(client_frame(0x1, b'{"type": "ping", "note": "\xff\xfe"}'))
    opcode, payload = server_frame(sock)
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1007
    sock.close()
    assert gw.wait_healthy()["status"] == "ok"


async def test_websocket_abuse_leaves_a_normal_client_whole(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(start=False)
    text = gw.config_path.read_text()
    gw.config_path.write_text(text.replace("[http]\n", "[http]\nwebsocket_send_buffer = 16384\n", 1))
    gw.start()
    normal = await ws_connect(gw)
    await recv_json(normal)
    assert gw.proc is not None
    rss_before = rss_mib(gw.proc.pid)

    # 200 clients that vanish without a close frame.
    for _ in range(4):
        sockets = await asyncio.gather(*(ws_connect(gw) for _ in range(50)))
        for ws in sockets:
            ws.transport.abort()
    # A 1 MB frame: the connection is dropped as it arrives (1009), nobody else disturbed.
    big = await ws_connect(gw, max_size=None)
    await recv_json(big)
    await big.send("x" * 1_000_000)
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(big.recv(), 5)
    assert closed.value.rcvd is None or closed.value.rcvd.code == 1009
    # 1,000 junk messages in about a second from one client: most are dropped, it is told so.
    flood = await ws_connect(gw)
    await recv_json(flood)
    for i in range(1000):
        await flood.send("junk")
        if i % 100 == 99:
            await asyncio.sleep(0.1)
    told = await recv_until(flood, lambda m: "too many messages" in m.get("error", ""))
    assert told["type"] == "error"
    # A client that stops reading while alerts pour out: dropped, not buffered without end.
    slow = await asyncio.to_thread(never_reading_client, gw)
    raised = 0
    for i in range(400):
        contact = "true" if i % 2 else "false"
        await publish(gw.mqtt_port, "zigbee2mqtt/front_door", f'{{"contact": {contact}}}')
        if i % 2 == 0:
            msg = await recv_until(normal, alert_event("raised"))
            raised += 1
            assert msg["alert"]["message"] == "Front door opened"
        if "dropped WebSocket client" in gw.log:
            break
    assert "dropped WebSocket client" in gw.log
    slow.close()

    # The normal client got every alert; the gateway is healthy and back to its size.
    assert raised >= 1
    await until(lambda: metric(gw, "gateway_websocket_connections") == 2, what="the leftovers reaped")
    assert metric(gw, 'gateway_bad_input_total{protocol="websocket",reason="rate"}') >= 500
    assert metric(gw, 'gateway_bad_input_total{protocol="websocket",reason="slow_client"}') == 1
    assert gw.wait_healthy()["status"] == "ok"
    await flood.close()
    await until(lambda: metric(gw, "gateway_websocket_connections") == 1, what="the flood client gone")
    assert rss_mib(gw.proc.pid) - rss_before < 10
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact": true}')
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact": false}')
    await recv_until(normal, alert_event("raised"))
    await normal.close()


async def test_bad_sensor_payloads_are_counted_logged_once_and_survived(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    ws = await ws_connect(gw)
    await recv_json(ws)
    bad = [
        b"{not json",
        b"\xff\xfe\x00\x81",  # not UTF-8
        b'{"temp": {"water": 1}, "pad": "' + b"x" * 70_000 + b'"}',  # over mqtt.max_payload (64 KiB)
        b'{"temp": {"water": NaN}}',
        b'{"temp": {"water": Infinity}}',
        b"[" * 10_000 + b"]" * 10_000,  # nested 10,000 deep
        b'{"temp": {"water": [1, 2]}}',  # a list where a reading belongs
        b'{"temp": "hot"}',  # the field's parent is not an object
        b"",
    ]
    before = metric(gw, 'gateway_mqtt_messages_total{outcome="bad_payload"}')
    for payload in bad:
        await publish(mosquitto.port, "sensors/boiler", payload)
    # Other sensors carry on meanwhile, and the gateway stays healthy.
    await publish(mosquitto.port, DOOR, '{"contact": false}')
    await recv_until(ws, alert_event("raised"))
    await until(
        lambda: metric(gw, 'gateway_mqtt_messages_total{outcome="bad_payload"}') - before == len(bad),
        what="every bad payload counted",
    )
    assert gw.wait_healthy()["status"] == "ok"
    # Logged, but rate-limited: one line for the burst from this sensor.
    assert gw.log.count("sensor boiler: ignored a message on sensors/boiler") == 1
    # And the sensor itself still works.
    await publish(mosquitto.port, "sensors/boiler", '{"temp": {"water": 95}}')
    hot = await recv_until(ws, alert_event("raised"))
    assert hot["alert"]["message"] == "Boiler at 95"
    await ws.close()


async def test_a_locked_database_still_lets_alerts_reach_live_clients(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    # Without the alert journal (as with a Redis layer, where processes share seq through the
    # database): the raise waits for the database and goes out unsaved. With the journal, see
    # tests/test_journal.py: it is stored and told at once.
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", start=False)
    gw.config_path.write_text(
        gw.config_path.read_text().replace("[gateway]\n", "[gateway]\njournal = false\n", 1)
    )
    gw.start()
    ws = await ws_connect(gw)
    hello = await recv_json(ws)
    siren: asyncio.Queue[bytes] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="siren")
    watcher.on_message = lambda c, u, m: loop.call_soon_threadsafe(siren.put_nowait, m.payload)
    subscribed = asyncio.Event()
    watcher.on_subscribe = lambda *a: loop.call_soon_threadsafe(subscribed.set)
    watcher.on_connect = lambda c, *a: c.subscribe("zigbee2mqtt/siren/set", 1)
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.loop_start()
    await asyncio.wait_for(subscribed.wait(), 5)

    # Another program holds the database's write lock past the gateway's 5 s wait.
    blocker = sqlite3.connect(gw.workdir / "var" / "gateway.sqlite3", timeout=1, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        await publish(mosquitto.port, DOOR, '{"contact": false}')
        raised = await recv_until(ws, alert_event("raised"), timeout=15)
        assert raised["saved"] is False and raised["seq"] == 0
        assert raised["alert"]["message"] == "Front door opened"
        assert json.loads(await asyncio.wait_for(siren.get(), 5))["state"] == "ON"  # the siren sounds
        assert "could not store the raise of rule door-opened" in gw.log
        assert gw.wait_healthy()["status"] == "ok"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # The database is back: the clear refers to the alert the clients saw, and later ones are stored.
    await publish(mosquitto.port, DOOR, '{"contact": true}')
    cleared = await recv_until(ws, alert_event("cleared"), timeout=10)
    assert cleared["alert"]["id"] == raised["alert"]["id"] and cleared["saved"] is False
    await publish(mosquitto.port, DOOR, '{"contact": false}')
    stored = await recv_until(ws, alert_event("raised"), timeout=10)
    assert "saved" not in stored and stored["seq"] == hello["seq"] + 1
    watcher.loop_stop()
    watcher.disconnect()
    await ws.close()
