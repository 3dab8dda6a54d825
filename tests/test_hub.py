"""Dashboards in process: the Hub (one membership per process, one frame per event, nothing twice),
and a socket under Channels' communicator, a server without the `gateway.frames` extension."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import django
from channels.testing import WebsocketCommunicator
from django.conf import settings

from gateway.config import Config
from gateway.engine.alerts import AlertChange
from gateway.engine.board import SensorBoard
from gateway.layers.memory import MemoryLayer

if not settings.configured:
    settings.configure(CHANNEL_LAYERS={}, INSTALLED_APPS=["gateway.store.apps.GatewayConfig"])
django.setup()

from consumers.dashboard import AlertSocket, Hub  # noqa: E402 - needs the apps loaded
from gateway.web.auth import TokenGate  # noqa: E402
from protocols.websocket.server import prepare  # noqa: E402


class Frames:
    """What the server's `gateway.frames` extension does for a socket, recorded: the frames written."""

    def __init__(self, open_: bool = True) -> None:
        self.open = open_
        self.written: list[Any] = []

    def send(self, prepared: Any) -> bool:
        if self.open:
            self.written.append(prepared)
        return self.open

    async def drained(self, timeout: float) -> bool:
        return self.open

    prepare = staticmethod(prepare)


class Socket:
    """The part of an AlertSocket the Hub uses."""

    def __init__(self, layer: MemoryLayer, since: int = 0, writer: Frames | None = None) -> None:
        self.runtime = SimpleNamespace(layer=layer)
        self.since = since
        self.held: list[dict[str, Any]] | None = None
        self.writer = writer
        self.frames = writer
        self.spawned: list[str] = []

    def spawn_send(self, text: str) -> None:
        self.spawned.append(text)


async def _written(socket: Socket, n: int) -> None:
    assert socket.writer is not None
    while len(socket.writer.written) < n:  # noqa: ASYNC110 - the Hub's loop runs between the sleeps
        await asyncio.sleep(0)


def alert(seq: int, saved: bool = True) -> dict[str, Any]:
    return {"type": "alert.raised", "seq": seq, "saved": saved, "alert": {}, "text": f'{{"seq":{seq}}}'}


async def test_one_membership_and_one_frame_for_every_socket() -> None:
    layer = MemoryLayer()
    hub = Hub()
    sockets = [Socket(layer, writer=Frames()) for _ in range(50)]
    for socket in sockets:
        await hub.join(socket)  # type: ignore[arg-type]
    members = {group: len(members) for group, members in layer.groups.items()}
    assert members == {"alerts": 1, "sensors": 1, "site": 1}
    await layer.group_send("alerts", alert(1))
    await layer.group_send("sensors", {"type": "sensor.update", "sensor": {}, "text": '{"type":"sensor"}'})
    await layer.group_send("site", {"type": "site.mode", "mode": {}, "text": '{"type":"mode"}'})
    await asyncio.wait_for(_written(sockets[-1], 3), 5)
    frames = [s.writer.written for s in sockets if s.writer is not None]
    # The same three prepared frames, framed once each, in the order sent.
    assert all(len(w) == 3 and all(w[i] is frames[0][i] for i in range(3)) for w in frames)
    assert frames[0][0].payloadHybi.endswith(b'{"seq":1}') and frames[0][1].payloadHybi.endswith(b'"sensor"}')
    assert frames[0][2].payloadHybi.endswith(b'{"type":"mode"}')
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
    assert live.writer is not None and [f.payloadHybi[2:] for f in live.writer.written] == [
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
    closed, open_ = Socket(layer, writer=Frames(open_=False)), Socket(layer, writer=Frames())
    hub.deliver(alert(1), [closed, open_])  # type: ignore[list-item]
    assert closed.writer is not None and closed.writer.written == []
    assert open_.writer is not None and len(open_.writer.written) == 1


class Book:
    """The part of the AlertBook a dashboard socket reads, over a list of stored events."""

    def __init__(self, changes: list[AlertChange]) -> None:
        self.changes = changes

    async def snapshot(self) -> tuple[int, list[dict[str, Any]]]:
        return self.changes[-1].seq, [self.changes[-1].alert]

    async def events_after(self, seq: int, limit: int, until: int) -> list[AlertChange]:
        return [c for c in self.changes if seq < c.seq <= until][:limit]


async def test_without_the_frames_extension_a_socket_gets_everything_through_asgi() -> None:
    raised = AlertChange.make("raised", 1, {"id": "a1", "state": "open"})
    runtime = SimpleNamespace(
        config=Config.model_validate({"auth": {"tokens": {"ops": "ops-secret-token"}}}),
        token_gate=TokenGate(),
        book=Book([raised]),
        board=SensorBoard([]),
        layer=MemoryLayer(),
        dashboards=None,
        alerting=SimpleNamespace(silences_json=list, mode="", modes=[]),  # what hello reads of SiteAlerting
    )
    comm = WebsocketCommunicator(AlertSocket.as_asgi(), "/ws/alerts/?token=ops-secret-token")
    comm.scope["gateway"] = runtime  # as gateway.asgi.WithRuntime does
    assert "extensions" not in comm.scope
    assert await comm.connect() == (True, None)
    hello = await comm.receive_json_from()
    assert (hello["type"], hello["seq"], hello["alerts"]) == ("hello", 1, [raised.alert])
    # A live event: the Hub sends it with `websocket.send`, as it has no frame to write.
    await runtime.layer.group_send("alerts", alert(2))
    assert await comm.receive_from() == '{"seq":2}'
    # A resume is paced by nothing but the awaited sends.
    await comm.send_json_to({"type": "resume", "after": 0})
    assert await comm.receive_from() == raised.text
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from() == {"type": "pong"}
    await comm.disconnect()
    assert runtime.dashboards.sockets == {}
    runtime.dashboards.stop()
