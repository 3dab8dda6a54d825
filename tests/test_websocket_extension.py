"""The `gateway.frames` scope extension (docs/specs/websocket.md) under the real `WebServer`
(daphne), driven by a bare ASGI application and a `websockets` client, in a process of its own
as Twisted's reactor is one per process."""

from __future__ import annotations

from tests.conftest import run_web_script

APP = """
import asyncio, json, sys
from gateway.server import event_loop

loop = event_loop(["web"])
import websockets
from protocols.websocket.server import WebServer

seen = {}
ended = asyncio.Event()


async def app(scope, receive, send):
    frames = scope["extensions"]["gateway.frames"]
    seen["methods"] = sorted(m for m in ("prepare", "send", "drained") if callable(getattr(frames, m, None)))
    assert (await receive())["type"] == "websocket.connect"
    frame = frames.prepare("frame")
    seen["before_accept"] = frames.send(frame)
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "send 1"})
    seen["sent"] = [frames.send(frame)]
    await send({"type": "websocket.send", "text": "send 2"})
    seen["sent"].append(frames.send(frame))
    seen["drained"] = await frames.drained(5.0)
    await send({"type": "websocket.send", "text": "send 3"})
    seen["disconnect"] = await receive()
    seen["after_close"] = frames.send(frame)
    ended.set()


async def main():
    server = WebServer(app, "127.0.0.1", 0)
    await server.start()
    async with websockets.connect(f"ws://127.0.0.1:{server.port_bound}/") as ws:
        seen["received"] = [await asyncio.wait_for(ws.recv(), 5) for _ in range(5)]
    await asyncio.wait_for(ended.wait(), 5)
    await server.stop()
    print(json.dumps(seen))


loop.run_until_complete(main())
"""


def test_frames_go_out_in_call_order_with_ordinary_sends_and_only_while_open() -> None:
    seen = run_web_script(APP)
    assert seen["methods"] == ["drained", "prepare", "send"]
    assert seen["before_accept"] is False  # not open yet: nothing written
    assert seen["received"] == ["send 1", "frame", "send 2", "frame", "send 3"]
    assert seen["sent"] == [True, True] and seen["drained"] is True
    assert seen["disconnect"] == {"type": "websocket.disconnect", "code": 1000}
    assert seen["after_close"] is False
