"""The raw Python floor: a minimal paho-mqtt -> `websockets` broadcast bridge, no ASGI, no channel layer.

    python bench/floor.py --mqtt 127.0.0.1:1883 --ws 127.0.0.1:8765 [--topic 'bench/#']

What every benchmark result of the gateway is divided by (bench/run.py runs both in the same run).
One process, one asyncio loop; paho is driven by that loop through its socket callbacks (no thread,
no poll interval), as the gateway drives it. It subscribes at QoS 1 and, for each message, does
what the gateway cannot avoid doing: `json.loads` the payload, build one JSON envelope, and hand
it to every connected WebSocket with `websockets.broadcast` (encoded once). No rules, no database,
no auth. It speaks just enough of the gateway's WebSocket protocol for the same client to measure
both: a `hello` with the current `seq` on connect, then `{"type":"alert","event":"raised","seq":N,...}`
per message. TCP_NODELAY on every socket (asyncio sets it on the WebSocket ones by itself).

With `NOTIFY_SOCKET` set it sends `READY=1` once subscribed and listening, like the gateway's sd_notify.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import time
from typing import Any

import paho.mqtt.client as paho
from websockets.asyncio.server import ServerConnection, broadcast, serve


class Bridge:
    def __init__(self, loop: asyncio.AbstractEventLoop, topic: str) -> None:
        self.loop = loop
        self.topic = topic
        self.seq = 0
        self.clients: set[ServerConnection] = set()
        self.subscribed = asyncio.Event()
        self.mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"floor-{os.getpid()}")
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_subscribe = self._on_subscribe
        self.mqtt.on_message = self._on_message
        self.mqtt.on_socket_open = self._io_open
        self.mqtt.on_socket_close = self._io_close
        self.mqtt.on_socket_register_write = self._io_want_write
        self.mqtt.on_socket_unregister_write = self._io_done_write
        self._misc: asyncio.TimerHandle | None = None

    # paho on the asyncio loop (the pattern of paho's own loop_asyncio example)
    def _io_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.add_reader(sock, lambda: client.loop_read(max_packets=64))
        self._misc = self.loop.call_later(1.0, self._run_misc)

    def _io_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)
        if self._misc is not None:
            self._misc.cancel()

    def _io_want_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def _io_done_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    def _run_misc(self) -> None:
        if self.mqtt.loop_misc() == paho.MQTT_ERR_SUCCESS:
            self._misc = self.loop.call_later(1.0, self._run_misc)

    # MQTT
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self.subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            value = json.loads(msg.payload)
        except ValueError:
            return
        self.seq += 1
        envelope = {
            "type": "alert",
            "event": "raised",
            "seq": self.seq,
            "alert": {"topic": msg.topic, "value": value, "received": time.time()},
        }
        broadcast(self.clients, json.dumps(envelope, separators=(",", ":")))

    # WebSocket
    async def handler(self, ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "hello", "site": "floor", "seq": self.seq, "alerts": []}))
        self.clients.add(ws)
        try:
            async for message in ws:
                if '"ping"' in str(message):
                    await ws.send('{"type":"pong"}')
        finally:
            self.clients.discard(ws)


def notify_ready() -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    path = b"\0" + os.fsencode(address[1:]) if address[0] == "@" else os.fsencode(address)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", path)


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mqtt", default="127.0.0.1:1883", help="broker host:port")
    parser.add_argument("--ws", default="127.0.0.1:8765", help="WebSocket bind host:port")
    parser.add_argument("--topic", default="bench/#")
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bridge = Bridge(loop, args.topic)
    mqtt_host, mqtt_port = host_port(args.mqtt)
    ws_host, ws_port = host_port(args.ws)
    # connect() blocks for the TCP handshake only: on 127.0.0.1 that is microseconds.
    bridge.mqtt.connect(mqtt_host, mqtt_port, keepalive=30)
    async with serve(
        bridge.handler, ws_host, ws_port, compression=None, ping_interval=None, max_queue=None
    ) as server:
        await bridge.subscribed.wait()
        notify_ready()
        await stop.wait()
        server.close()
    bridge.mqtt.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
