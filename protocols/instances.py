"""One application instance per scope, daphne's way (`Server.create_application`, `application_checker`).

Each instance is the application called with its scope, a `receive` and a `send` the server
makes for it; its task is tracked, and when it fails its exception is logged with what its
scope is for, and the server's policy says whether (and after how long) it starts again with
the same `receive`, that is with what is still queued for it. `close` starts none again and
cancels what does not end in time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from gateway.ops import logs

__all__ = ["Instance", "Supervisor"]

# An instance failing in a loop logs once per this many seconds, with the count of those it held back.
FAILURE_LOG_INTERVAL = 30.0


@dataclass(eq=False, kw_only=True)
class Instance:
    """What a server keeps for one scope; each server's own record adds what it needs."""

    scope: Any  # the protocol's scope TypedDict; each instance is given a copy
    task: asyncio.Task[None] | None = None
    failures: int = 0  # in a row: the server resets it once the instance has done its work again


InstanceT = TypeVar("InstanceT", bound=Instance)

Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]


class Supervisor(Generic[InstanceT]):
    def __init__(
        self,
        application: Callable[..., Awaitable[None]],
        *,
        receive: Callable[[InstanceT], Receive],
        send: Callable[[InstanceT], Send],
        failed: Callable[[InstanceT, BaseException], float | None],
        ended: Callable[[InstanceT], None] = lambda inst: None,
        describe: Callable[[InstanceT], str],
        log: logging.Logger,
    ) -> None:
        """`failed(inst, exc)`: the seconds until `inst` starts again, or None for never; `ended(inst)`:
        it returned or was cancelled. `describe(inst)` names it in the log ("MQTT device 'boiler'")."""
        self.application = application
        self.receive, self.send = receive, send
        self.failed, self.ended = failed, ended
        self.describe = describe
        self.log = log
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._restarts: dict[InstanceT, asyncio.TimerHandle] = {}
        self._failure_log = logs.RateLimit(interval=FAILURE_LOG_INTERVAL)

    def start(self, inst: InstanceT) -> None:
        if self.closed:
            return  # a restart that came due after the end
        coro = self.application(dict(inst.scope), self.receive(inst), self.send(inst))
        inst.task = task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(partial(self._done, inst))

    def _done(self, inst: InstanceT, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (exc := task.exception()) is None:
            self.ended(inst)
            return
        inst.failures += 1
        what = self.describe(inst)
        allowed, held = self._failure_log.allow(what)
        if allowed:
            self.log.error(
                "application for %s failed (%d in a row%s): %r",
                what,
                inst.failures,
                f", {held} failures not logged" if held else "",
                exc,
                exc_info=exc,
            )
        delay = self.failed(inst, exc)
        if delay is None or self.closed:
            return
        self._restarts[inst] = asyncio.get_running_loop().call_later(delay, self._restart, inst)

    def _restart(self, inst: InstanceT) -> None:
        del self._restarts[inst]
        self.start(inst)

    def stop(self) -> None:
        """Start no instance again (the server is stopping)."""
        self.closed = True
        for handle in self._restarts.values():
            handle.cancel()
        self._restarts.clear()

    async def close(self, timeout: float) -> None:
        """`stop`; wait at most `timeout` seconds for the running instances to end (the server has
        told them to), then cancel the rest."""
        self.stop()
        tasks = [task for task in self._tasks if not task.done()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
