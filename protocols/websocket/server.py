"""`WebServer`: daphne, started and stopped as one component of the gateway's event loop.

Importing daphne.server installs Twisted's asyncio reactor on a loop daphne
creates; the gateway runs everything on that loop (see gateway.server.event_loop),
so HTTP, WebSocket, MQTT and Telegram share one thread.

This module holds what it uses of daphne beyond its documented API (its factories, Server and
WebSocketProtocol methods, `create_application` redone with an `Inbox`, the protocol's handshake
attributes and `request.path`, none of them private) and of autobahn (`sendCloseFrame`,
`CONFIG_ATTRS` and the handshake's attributes, none private either); the private names of
Twisted and autobahn are in protocols._twisted and protocols._autobahn. tests/test_internals.py
checks them all by name (daphne 4.2.3), autobahn's on the version protocols._autobahn names.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

from gateway.ops import logs, metrics
from protocols import _autobahn, _twisted
from protocols.websocket.http_guard import Guard
from protocols.websocket.inbox import Inbox
from protocols.websocket.twisted_io import guarded_channel
from protocols.websocket.types import FRAMES, WebSocketExtensions

# A client message larger than this closes its socket (1009) before it is even read whole;
# one over the consumer's 64 KiB (still small) gets an error and the socket stays open.
MAX_MESSAGE = 256 * 1024
# Close codes of RFC 6455 that consumers may send besides autobahn's 1000 and 3000-4999.
SERVER_CLOSE_CODES = frozenset({1001, 1008, 1009, 1011})


# A WebSocket protocol's attributes that nothing reads once it is open: autobahn's parsed HTTP request
# and response, daphne's copy of the headers (the scope's) and its application's fired deferred.
HANDSHAKE_STATE = (
    "http_headers",
    "http_request_data",
    "http_response_data",
    "http_status_line",
    "http_request_uri",
    "http_request_params",
    "http_request_path",
    "http_request_host",
    "websocket_origin",
    "websocket_protocols",
    "websocket_extensions",
    "clean_headers",
    "application_deferred",
    "protocol_to_accept",
)


class FactoryOption:
    """One of autobahn's protocol options (`CONFIG_ATTRS`), read from the protocol's factory.

    autobahn copies each of them (29 for a server) into every connection's `__dict__` unless the
    protocol already has it; as a class attribute it has, and the dict of an open socket stays
    in a table of half the size. Set on a protocol, an option is that protocol's alone, as in
    autobahn; the gateway sets the factory's options once, before it listens.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, protocol: Any, owner: type | None = None) -> Any:
        if protocol is None:
            return self
        return getattr(protocol.factory, self.name)


class Opened:
    """What daphne reads of an open socket's `request` (autobahn's `ConnectionRequest`): its path."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class WebStartError(OSError):
    """The listening socket's error (the gateway says which config key it was)."""


def prepare(text: str) -> Any:
    """One server-to-client text frame, built once for any number of sockets (autobahn's broadcast API)."""
    return _prepared_message()(text.encode(), False, False, False)


@functools.cache
def _prepared_message() -> Any:
    from autobahn.websocket.protocol import PreparedMessage

    return PreparedMessage


class _Turns:
    """Loop turns, counted while frames are written, and the frames held to a turn's end.

    A socket's first frame of a turn goes to the kernel at once (a lone alert: no wait); the
    next ones of the same turn (an alert storm: many readings handled in one turn) wait for the
    end of the turn and go in one `send(2)`, in order.
    """

    def __init__(self) -> None:
        self.n = 0
        self.ticking = False
        self.held: dict[FrameWriter, list[bytes]] = {}

    def arm(self) -> None:
        """The turn's end is marked (`tick`) after the current callback; called after a frame is
        written at once, so the `call_soon` is not paid before it. Until that tick, `n` is this turn's."""
        if not self.ticking:
            self.ticking = True
            asyncio.get_running_loop().call_soon(self.tick)

    def tick(self) -> None:
        self.n += 1
        self.ticking = False
        held, self.held = self.held, {}
        for writer, frames in held.items():
            writer.write(b"".join(frames))

    def release(self, writer: FrameWriter | None) -> None:
        """The frames held for this socket, now: before anything else is written to it."""
        frames = self.held.pop(writer, None) if writer is not None else None
        if frames:
            writer.write(b"".join(frames))  # type: ignore[union-attr]


_turns = _Turns()


class FrameWriter:
    """Writes a prepared frame straight to its socket: the `gateway.frames` scope extension.

    A broadcast to a thousand dashboards then frames its message once and costs one
    `send(2)` per socket, instead of a channel message, a consumer wake-up, an ASGI
    send, a framing and Twisted's deferred write (two `epoll_ctl` and a loop turn)
    each (see consumers.dashboard.Hub). Applications reach it through the scope
    (docs/specs/websocket.md); under other servers, and in communicator tests, the
    extension is absent and they send through ASGI.
    """

    __slots__ = ("_protocol", "_turn")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._turn = -1  # the loop turn of its last frame written at once
        protocol.frame_writer = self  # its ASGI sends and its close come after the frames held

    prepare = staticmethod(prepare)

    def send(self, prepared: Any) -> bool:
        """Write it unless the socket is closing or its client stopped reading; whether it was."""
        protocol = self._protocol
        if protocol.state != protocol.STATE_OPEN or protocol.too_slow():
            return False
        data = _autobahn.frame(protocol, prepared)
        if data is None:
            _turns.release(self)
            protocol.sendPreparedMessage(prepared)  # autobahn's own path: compressed or queued
            return True
        turn = _turns.n
        if self._turn == turn:
            # Its second frame this turn (the tick that ends it, armed by the first, has not run):
            # held to the end of the turn.
            _turns.held.setdefault(self, []).append(data)
            return True
        self._turn = turn
        try:
            self.write(data)
        finally:
            _turns.arm()  # whatever the write did: frames held to this turn go out at its end
        return True

    def write(self, data: bytes) -> None:
        protocol = self._protocol
        if protocol.state == protocol.STATE_OPEN:
            _twisted.write(protocol.transport, data)  # to the kernel now when nothing waits before it

    async def drained(self, timeout: float) -> bool:
        """Once what was written went out to the kernel; False when the socket closed (or was
        dropped: its client read nothing for `timeout` seconds). For writers that pace themselves."""
        return await self._protocol.drained(timeout)  # type: ignore[no-any-return]


def bounded_protocol(base: Any, limit: int) -> type:
    """daphne's WebSocket protocol that drops a client which stopped reading, not the process."""

    class BoundedWebSocketProtocol(base):  # type: ignore[misc, valid-type]
        # Set while Twisted holds over half of `limit` for the client (this protocol is the
        # transport's streaming producer); `_drained` is what a paced writer awaits meanwhile.
        writing_paused = False
        _drained: asyncio.Future[None] | None = None
        frame_writer: FrameWriter | None = None
        request: Any  # autobahn's ConnectionRequest, then `Opened`

        def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
            # Alerts are small writes: no Nagle delay behind an unacknowledged one. And the
            # kernel's share of a slow client's backlog is bounded too, not autotuned to MiBs.
            transport = self.transport
            with contextlib.suppress(AttributeError, OSError):
                transport.setTcpNoDelay(True)
                transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limit)
            # The HTTP channel this socket was upgraded from is still the transport's producer.
            with contextlib.suppress(AttributeError):
                transport.unregisterProducer()
                transport.bufferSize = min(transport.bufferSize, limit // 2)
                transport.registerProducer(self, True)
            super().connectionMade()

        def onOpen(self) -> None:  # noqa: N802 - autobahn's name
            super().onOpen()  # daphne logs the path it reads from the request
            # What only the handshake needed would stay as long as the socket: a few KiB each.
            state = self.__dict__
            for name in HANDSHAKE_STATE:
                state.pop(name, None)
            self.request = Opened(self.request.path)
            # A dict does not shrink, nor does `dict(state)`: one filled item by item is sized for
            # what is left, with room for what reading frames adds (about ten attributes).
            self.__dict__ = dict(state.items())

        def pauseProducing(self) -> None:  # noqa: N802 - Twisted's name
            self.writing_paused = True

        def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
            self.writing_paused = False
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

        def stopProducing(self) -> None:  # noqa: N802 - Twisted's name
            self.resumeProducing()  # the connection is gone: nothing more to wait for

        async def drained(self, timeout: float) -> bool:
            """Wait until what was written went out; False once the socket is closed.

            A client that reads nothing for `timeout` seconds meanwhile is dropped as too slow.
            """
            if self.writing_paused and self.state == self.STATE_OPEN:
                waiter = self._drained = asyncio.get_running_loop().create_future()
                try:
                    await asyncio.wait_for(waiter, timeout)
                except TimeoutError:
                    self._drop_slow(_twisted.buffered(self.transport))
                finally:
                    self._drained = None
            return bool(self.state == self.STATE_OPEN)

        def too_slow(self) -> bool:
            """Whether its client left more than `limit` bytes unread; such a client is dropped."""
            waiting = _twisted.buffered(self.transport)
            if waiting <= limit:
                return False
            self._drop_slow(waiting)
            return True

        def _drop_slow(self, waiting: int) -> None:
            if not getattr(self, "dropped_slow", False):
                self.dropped_slow = True
                metrics.bad_input.labels("websocket", "slow_client").inc()
                logs.web.warning(
                    "dropped WebSocket client %s: %d bytes it did not read", self.client_addr, waiting
                )
                self.dropConnection(abort=True)

        def serverClose(self, code: int | None = None) -> None:  # noqa: N802 - daphne's name
            # autobahn's sendClose takes only the application codes (1000, 3000-4999) and raises on
            # the protocol's own, so a consumer's 1008 reached the client as 1011 and the consumer
            # died. 1008 (policy) and 1009 (too big) are this server's to send: the frame directly.
            _turns.release(self.frame_writer)
            if code in SERVER_CLOSE_CODES and self.state == self.STATE_OPEN:
                self.sendCloseFrame(code=code, isReply=False)
            else:
                super().serverClose(code)

        def serverSend(self, content: Any, binary: bool = False) -> None:  # noqa: N802 - daphne's name
            _turns.release(self.frame_writer)
            if not self.too_slow():
                super().serverSend(content, binary)

    for name in base.CONFIG_ATTRS:
        setattr(BoundedWebSocketProtocol, name, FactoryOption(name))
    return BoundedWebSocketProtocol


class WebServer:
    name = "web"

    def __init__(
        self,
        application: Any,
        host: str,
        port: int,
        send_buffer: int = 262144,
        guard: Guard | None = None,
        on_state: Callable[[bool], None] = lambda up: None,
        **options: Any,
    ) -> None:
        self.application = application
        self.host, self.port = host, port
        self.send_buffer = send_buffer
        self.guard = guard or Guard()
        self.on_state = on_state
        self.options = options
        self.ready = asyncio.Event()
        self._daphne: Any = None
        self.port_bound: int | None = None
        self._ports: list[Any] = []

    async def start(self) -> None:
        """Listen; the reactor serves on this loop from then on."""
        from daphne.server import Server
        from twisted.internet import reactor

        errors: list[OSError] = []
        ports = self._ports

        class _Daphne(Server):  # type: ignore[misc]
            def listen_success(self, port: Any) -> None:
                ports.append(port)
                super().listen_success(port)

            def listen_error(self, failure: Any) -> None:
                # daphne would stop the reactor, and with it our loop: report instead.
                err = getattr(failure.value, "socketError", None)  # Twisted's CannotListenError
                errors.append(err if isinstance(err, OSError) else OSError(failure.getErrorMessage()))

            def create_application(self, protocol: Any, scope: dict[str, Any]) -> Inbox | None:
                # daphne's own, with an `Inbox` for its `asyncio.Queue` (protocols.websocket.inbox).
                if scope.get("type") == "websocket" and hasattr(protocol, "too_slow"):
                    extensions: WebSocketExtensions = scope.setdefault("extensions", {})
                    extensions[FRAMES] = FrameWriter(protocol)
                connection = self.connections.get(protocol)
                if connection is None:
                    return None
                assert "application_instance" not in connection
                inbox = Inbox()
                scope.setdefault("asgi", {"version": "3.0"})
                application = self.application(
                    scope=scope, receive=inbox.get, send=partial(self.handle_reply, protocol)
                )
                connection["application_instance"] = asyncio.ensure_future(application)
                return inbox

        host = self.host.replace(":", r"\:")
        self._daphne = daphne = _Daphne(
            self.application,
            endpoints=[f"tcp:port={self.port}:interface={host}"],
            signal_handlers=False,
            # daphne closes every WebSocket after a day by default; a wall screen stays. Dead
            # peers are found by daphne's pings (20 s) and the dashboard's own.
            **{
                "websocket_timeout": -1,
                "websocket_max_message_size": MAX_MESSAGE,
                "websocket_max_frame_size": MAX_MESSAGE,
                **self.options,
            },
        )
        # Server.run() ends in reactor.run(); here the loop is already running,
        # so only start the reactor's bookkeeping and return.
        real_run = reactor.run  # type: ignore[misc]

        def start_only(installSignalHandlers: bool = False) -> None:  # noqa: N803 - Twisted's name
            reactor.startRunning(installSignalHandlers=False)

        reactor.run = start_only  # type: ignore[method-assign, misc]
        try:
            daphne.run()
        finally:
            reactor.run = real_run  # type: ignore[method-assign, misc]
        _autobahn.enabled()  # decided (and a fallback logged) at start-up, not at the first frame
        # Before the loop accepts anyone: every connection is guarded, every WebSocket bounded.
        daphne.http_factory.protocol = guarded_channel(self.guard)
        daphne.ws_factory.protocol = bounded_protocol(daphne.ws_factory.protocol, self.send_buffer)
        # A frame over MAX_MESSAGE gets a close frame the client can read (1009), and the rest of it
        # is skipped unread; autobahn's default drops the TCP connection without one (1006). The
        # client may still be sending that frame: its close reply gets 5 s, not autobahn's 1.
        daphne.ws_factory.setProtocolOptions(failByDrop=False, closeHandshakeTimeout=5)
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(d.asFuture(loop) for d in daphne.listeners))
        if errors:
            raise WebStartError(*errors[0].args)
        self.port_bound = daphne.listening_addresses[0][1]
        logs.web.info("HTTP and WebSocket on http://%s:%d/", self.host, self.port_bound)
        self.ready.set()
        self.on_state(True)

    async def serve(self, stop: asyncio.Event) -> None:
        """Twisted serves on the loop until `stop` is set; then the server stops (`stop()`)."""
        await stop.wait()
        await self.stop()

    async def stop(self) -> None:
        """Listen no more, close every connection (WebSockets with 1001), reap the applications."""
        daphne = self._daphne
        if daphne is None:
            return
        for port in self._ports:
            await _deferred(port.stopListening())
        # Close live connections: WebSockets with 1001 (going away), then reap the apps.
        for protocol, details in list(daphne.connections.items()):
            if "disconnected" in details or getattr(protocol, "transport", None) is None:
                continue
            if hasattr(protocol, "sendCloseFrame"):
                protocol.sendCloseFrame(code=1001, isReply=False)
            else:
                protocol.transport.loseConnection()
        deadline = asyncio.get_running_loop().time() + 3.0
        while any("application_instance" in d for d in daphne.connections.values()):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        daphne.kill_all_applications()


async def _deferred(d: Any) -> None:
    if d is not None and hasattr(d, "asFuture"):
        await d.asFuture(asyncio.get_running_loop())
