"""`WebServer`: daphne, started and stopped as one component of the gateway's event loop.

Importing daphne.server installs Twisted's asyncio reactor on a loop daphne
creates; the gateway runs everything on that loop (see gateway.server.event_loop),
so HTTP, WebSocket, MQTT and Telegram share one thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway import logs


class WebStartError(Exception):
    pass


class WebServer:
    name = "web"

    def __init__(self, application: Any, host: str, port: int, **options: Any) -> None:
        self.application = application
        self.host, self.port = host, port
        self.options = options
        self._daphne: Any = None
        self.port_bound: int | None = None
        self._ports: list[Any] = []

    async def start(self) -> None:
        from daphne.server import Server
        from twisted.internet import reactor

        errors: list[str] = []
        ports = self._ports

        class _Daphne(Server):  # type: ignore[misc]
            def listen_success(self, port: Any) -> None:
                ports.append(port)
                super().listen_success(port)

            def listen_error(self, failure: Any) -> None:
                # daphne would stop the reactor, and with it our loop: report instead.
                errors.append(failure.getErrorMessage())

        host = self.host.replace(":", r"\:")
        self._daphne = daphne = _Daphne(
            self.application,
            endpoints=[f"tcp:port={self.port}:interface={host}"],
            signal_handlers=False,
            # daphne closes every WebSocket after a day by default; a wall screen stays. Dead
            # peers are found by daphne's pings (20 s) and the dashboard's own.
            **{"websocket_timeout": -1, **self.options},
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
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(d.asFuture(loop) for d in daphne.listeners))
        if errors:
            raise WebStartError(
                f"http.bind {self.host}:{self.port}: cannot listen: {errors[0]}. "
                "Set http.bind to a free address."
            )
        self.port_bound = daphne.listening_addresses[0][1]
        logs.web.info("HTTP and WebSocket on http://%s:%d/", self.host, self.port_bound)

    async def stop(self) -> None:
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
