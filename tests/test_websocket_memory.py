"""What an open WebSocket keeps (issue 19: at most 20 KiB per idle dashboard): no handshake state, no
per-connection copy of autobahn's options, an `Inbox` for daphne's `asyncio.Queue`, and still the
same socket to its client. The server runs in a process of its own (Twisted's reactor is one per
process); `Inbox` is tested here, on the test's loop."""

from __future__ import annotations

import asyncio

import pytest

from protocols.websocket.inbox import Inbox
from tests.conftest import run_web_script

APP = """
import asyncio, json, sys
from gateway.server import event_loop

loop = event_loop(["web"])
import websockets
from protocols.websocket.server import HANDSHAKE_STATE, WebServer

got = []
ended = asyncio.Event()


async def app(scope, receive, send):
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "hello"})
    while (event := await receive())["type"] == "websocket.receive":
        got.append(event["text"])
        await send({"type": "websocket.send", "text": "echo " + event["text"]})
    got.append(event)
    ended.set()


def kept(server):
    protocol = next(p for p in server._daphne.connections if hasattr(p, "too_slow"))
    options = type(protocol).CONFIG_ATTRS
    return {
        "handshake": sorted(set(HANDSHAKE_STATE) & set(vars(protocol))),
        "options": sorted(set(options) & set(vars(protocol))),
        "option_values": [getattr(protocol, name) == getattr(protocol.factory, name) for name in options],
        "attributes": len(vars(protocol)),
        "dict_bytes": sys.getsizeof(vars(protocol)),
        "path": protocol.request.path,
        "queue": type(protocol.application_queue).__name__,
    }


async def main():
    server = WebServer(app, "127.0.0.1", 0)
    await server.start()
    seen = {}
    async with websockets.connect(f"ws://127.0.0.1:{server.port_bound}/ws/alerts/?token=x") as ws:
        seen["hello"] = await asyncio.wait_for(ws.recv(), 5)
        seen["open"] = kept(server)
        await asyncio.wait_for(await ws.ping(), 5)  # frames read: autobahn adds its frame state
        await ws.send("ack")
        seen["echo"] = await asyncio.wait_for(ws.recv(), 5)
        seen["talked"] = kept(server)
    await asyncio.wait_for(ended.wait(), 5)
    seen["got"] = got
    await server.stop()
    print(json.dumps(seen))


loop.run_until_complete(main())
"""


def test_an_open_socket_keeps_no_handshake_state_and_still_talks() -> None:
    seen = run_web_script(APP)
    assert seen["hello"] == "hello" and seen["echo"] == "echo ack"
    assert seen["got"] == ["ack", {"type": "websocket.disconnect", "code": 1000}]
    for state in (seen["open"], seen["talked"]):
        assert state["handshake"] == [] and state["options"] == []
        assert all(state["option_values"])  # read from the factory, as autobahn would have copied them
        assert state["path"] == "/ws/alerts/"  # what daphne logs when it closes
        assert state["queue"] == "Inbox"
        # Under 86 attributes: a table of 128 slots (1.6 KiB), not 256 (3.3 KiB).
        assert state["attributes"] <= 85 and state["dict_bytes"] < 2048, state


async def test_inbox_is_first_in_first_out_and_waits_when_empty() -> None:
    inbox = Inbox()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert [await inbox.get(), await inbox.get()] == [1, 2]
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.put_nowait(3)
    assert await asyncio.wait_for(waiting, 5) == 3


async def test_inbox_gives_a_cancelled_getters_item_to_the_next() -> None:
    inbox = Inbox()
    first = asyncio.ensure_future(inbox.get())
    second = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("only")  # wakes the first getter...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 5) == "only"
    inbox.put_nowait("next")
    assert await inbox.get() == "next"
