"""The lifecycle every protocol server follows, uvicorn's way: start, ready, serve until the stop
event, drain within a time limit; and `Servers`, which runs a list of them so without knowing which."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from functools import partial
from typing import Protocol

from gateway.ops import logs

log = logs.server

__all__ = ["Server", "Servers"]


class Server(Protocol):
    """A protocol server (web, MQTT, Telegram, a worker) or a service they lean on (the embedded broker).

    `start()` does what must work for the process to start at all, such as binding its listening
    socket, and raises if it cannot. `serve(stop)` serves until `stop` is set and then drains:
    it takes no more work, lets its application instances finish what they hold (each step
    bounded in time), closes its connections, and returns; a failure on the way is its own to
    survive (reconnect with back-off, start an instance again). `ready` is set once it serves
    (listening, connected); a server that comes up in the background sets it once it has
    started to (Telegram: aiogram takes seconds to import, and the bot may stand by).
    """

    @property
    def name(self) -> str: ...

    @property
    def ready(self) -> asyncio.Event: ...

    async def start(self) -> None: ...

    async def serve(self, stop: asyncio.Event) -> None: ...


class Servers:
    """Servers started in order, served together until `drain`, which gives them one time limit."""

    def __init__(self, servers: Iterable[Server] = ()) -> None:
        self.servers = list(servers)
        self._stop = asyncio.Event()
        self._serving: dict[asyncio.Task[None], Server] = {}

    async def start(self) -> None:
        """Start each in order and have it serve; raises what a start raised (`drain` ends the others)."""
        for server in self.servers:
            await server.start()
            task = asyncio.ensure_future(server.serve(self._stop))
            task.add_done_callback(partial(_served, server))
            self._serving[task] = server

    async def ready(self) -> None:
        """Once every server is ready."""
        await asyncio.gather(*(server.ready.wait() for server in self.servers))

    async def drain(self, timeout: float) -> None:
        """Stop them all at once, and wait at most `timeout` seconds for them to drain; cancel the rest."""
        self._stop.set()
        if not self._serving:
            return
        _, pending = await asyncio.wait(self._serving, timeout=timeout)
        for task in pending:
            log.warning("%s: not drained within %.0fs, cancelled", self._serving[task].name, timeout)
            task.cancel()


def _served(server: Server, task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s server failed: %r", server.name, exc, exc_info=exc)
