"""The dashboards' Hub, in process: one membership per process, one frame per event, nothing twice."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import django
from django.conf import settings

from gateway.layers.memory import MemoryLayer

if not settings.configured:
    settings.configure(CHANNEL_LAYERS={}, INSTALLED_APPS=["gateway.store.apps.GatewayConfig"])
django.setup()

from consumers.dashboard import Hub  # noqa: E402 - needs the apps loaded


class Frames:
    """What daphne's FrameWriter does for a socket, recorded: the prepared frames written."""

    def __init__(self, open_: bool = True) -> None:
        self.open = open_
        self.written: list[Any] = []

    def send(self, prepared: Any) -> bool:
        if self.open:
            self.written.append(prepared)
        return self.open


class Socket:
    """The part of an AlertSocket the Hub uses."""

    def __init__(self, layer: MemoryLayer, since: int = 0, frames: Frames | None = None) -> None:
        self.runtime = SimpleNamespace(layer=layer)
        self.since = since
        self.held: list[dict[str, Any]] | None = None
        self.frames = frames
        self.spawned: list[str] = []

    def spawn_send(self, text: str) -> None:
        self.spawned.append(text)


async def _written(socket: Socket, n: int) -> None:
    assert socket.frames is not None
    while len(socket.frames.written) < n:  # noqa: ASYNC110 - the Hub's loop runs between the sleeps
        await asyncio.sleep(0)


def alert(seq: int, saved: bool = True) -> dict[str, Any]:
    return {"type": "alert.raised", "seq": seq, "saved": saved, "alert": {}, "text": f'{{"seq":{seq}}}'}


async def test_one_membership_and_one_frame_for_every_socket() -> None:
    layer = MemoryLayer()
    hub = Hub()
    sockets = [Socket(layer, frames=Frames()) for _ in range(50)]
    for socket in sockets:
        await hub.join(socket)  # type: ignore[arg-type]
    assert {group: len(members) for group, members in layer.groups.items()} == {"alerts": 1, "sensors": 1}
    await layer.group_send("alerts", alert(1))
    await layer.group_send("sensors", {"type": "sensor.update", "sensor": {}, "text": '{"type":"sensor"}'})
    await asyncio.wait_for(_written(sockets[-1], 2), 5)
    frames = [s.frames.written for s in sockets if s.frames is not None]
    # The same two prepared frames, framed once each, in the order sent.
    assert all(len(w) == 2 and w[0] is frames[0][0] and w[1] is frames[0][1] for w in frames)
    assert frames[0][0].payloadHybi.endswith(b'{"seq":1}') and frames[0][1].payloadHybi.endswith(b'"sensor"}')
    hub.stop()


def test_held_events_wait_and_events_in_the_snapshot_are_not_sent_again() -> None:
    layer = MemoryLayer()
    hub = Hub()
    live, joining, plain = Socket(layer, 5, Frames()), Socket(layer, since=7), Socket(layer, since=5)
    joining.held = []
    sockets = [live, joining, plain]
    for seq in (6, 7, 8):
        hub.deliver(alert(seq), sockets)  # type: ignore[arg-type]
    hub.deliver(alert(0, saved=False), sockets)  # the database failed: it goes to everyone
    assert live.frames is not None and [f.payloadHybi[2:] for f in live.frames.written] == [
        b'{"seq":6}',
        b'{"seq":7}',
        b'{"seq":8}',
        b'{"seq":0}',
    ]
    assert plain.spawned == ['{"seq":6}', '{"seq":7}', '{"seq":8}', '{"seq":0}']  # not under daphne: ASGI
    assert joining.held is not None and [m["seq"] for m in joining.held] == [6, 7, 8, 0]
    # Released after its hello (seq 7): 6 and 7 were in the snapshot, 8 and the unsaved one were not.
    held, joining.held = joining.held, None
    for message in held:
        hub.deliver(message, (joining,))  # type: ignore[arg-type]
    assert joining.spawned == ['{"seq":8}', '{"seq":0}']


def test_a_closed_socket_is_not_counted_and_does_not_stop_the_others() -> None:
    layer = MemoryLayer()
    hub = Hub()
    closed, open_ = Socket(layer, frames=Frames(open_=False)), Socket(layer, frames=Frames())
    hub.deliver(alert(1), [closed, open_])  # type: ignore[list-item]
    assert closed.frames is not None and closed.frames.written == []
    assert open_.frames is not None and len(open_.frames.written) == 1
