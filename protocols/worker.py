"""`WorkerServer`: Channels' `runworker` on named channels, in the lifecycle of the other servers.

`channels.worker.Worker` does the work, as under `manage.py runworker`: a listener per channel
on the channel layer, one application instance per channel (scope `{"type": "channel",
"channel": name}`). Here an instance that fails is started again with the same queue (only the
message it failed on is lost), and at the stop event the worker takes no more messages, lets
each instance finish what it holds (bounded), and cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable
from channels.worker import Worker

from gateway.ops import logs
from protocols.backoff import Backoff

log = logs.worker

__all__ = ["WorkerServer"]

DRAIN_SECONDS = 5.0
# A worker, or an instance, that fails before it takes a message starts again after this,
# doubling up to RESTART_MAX while it keeps failing so.
RESTART_MIN = 0.5
RESTART_MAX = 30.0


class _Worker(Worker):
    async def handle(self) -> None:
        # Channels' own leaves its listeners running when it is cancelled: these end with it.
        listeners = [asyncio.ensure_future(self.listener(channel)) for channel in self.channels]
        try:
            await asyncio.gather(*listeners)
        finally:
            for listener in listeners:
                listener.cancel()


class WorkerServer:
    name = "worker"

    def __init__(
        self,
        application: Any,
        channels: Sequence[str],
        layer: Any,
        *,
        drain: float = DRAIN_SECONDS,
        on_state: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self.channels = list(channels)
        if not self.channels:
            raise ValueError("a worker listens on one channel at least")
        self.drain = drain
        self.on_state = on_state
        self.ready = asyncio.Event()
        # Channels whose instance waits for its next message: it holds none.
        self._waiting: set[str] = set()
        self._changed = asyncio.Event()
        self.worker = _Worker(self._supervised(application), self.channels, layer)

    def _supervised(self, application: Any) -> Any:
        """`application` as each channel's instance runs it: started again when it fails, and
        watched for whether it holds a message."""

        async def instance(scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
            channel = scope["channel"]
            took = False

            async def next_message() -> Any:
                nonlocal took
                # Asking for the next message means the last one is handled.
                self._waiting.add(channel)
                self._changed.set()
                try:
                    message = await receive()
                finally:
                    self._waiting.discard(channel)
                took = True
                return message

            backoff = Backoff(RESTART_MIN, RESTART_MAX)
            try:
                while True:
                    took = False
                    try:
                        await application(dict(scope), next_message, _no_client)
                        return
                    except Exception:
                        log.exception("worker on channel %s failed; it starts again", channel)
                    if took:
                        backoff.reset()
                    else:
                        await asyncio.sleep(backoff.next())
            finally:
                self._changed.set()

        return instance

    async def start(self) -> None:
        """Nothing to bind: the channel layer is reached (and reached again) by `serve`."""

    async def serve(self, stop: asyncio.Event) -> None:
        """Listen until `stop` is set, then drain; a failed listening starts again (with back-off)."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(RESTART_MIN, RESTART_MAX)
        try:
            while not stop.is_set():
                self.on_state(True)
                self.ready.set()
                log.info("worker listening on %s", ", ".join(self.channels))
                started = loop.time()
                try:
                    await _until(stop, self.worker.arun())
                except Exception as err:
                    self.on_state(False)
                    if loop.time() - started > RESTART_MAX:
                        backoff.reset()  # it listened a while: a new failure, not the same one again
                    delay = backoff.next()
                    log.error("worker stopped listening (%s); starting again in %.1fs", err, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
        finally:
            self.on_state(False)
            await self._drain()

    def _settled(self) -> bool:
        return all(
            details["future"].done() or (channel in self._waiting and details["input_queue"].empty())
            for channel, details in self.worker.application_instances.items()
        )

    async def _drain(self) -> None:
        """Wait (bounded) until every instance has asked for its next message, then cancel them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain
        while not self._settled() and loop.time() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
        if not self._settled():
            log.warning("worker: cancelled after %.0fs with messages in hand", self.drain)
        futures = [details["future"] for details in self.worker.application_instances.values()]
        self.worker.application_instances.clear()
        for future in futures:
            future.cancel()
        if futures:
            await asyncio.wait(futures)


async def _no_client(message: Any) -> None:
    # Channels' worker has no `send` either (a NotImplementedError): this one says why.
    raise ValueError(f"a worker has no client to send {message.get('type')!r} to: use the channel layer")


async def _until(stop: asyncio.Event, coroutine: Coroutine[Any, Any, None]) -> None:
    """Run `coroutine` until it ends (raising what it raised) or `stop` is set (it is cancelled)."""
    task = asyncio.ensure_future(coroutine)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if not task.cancelled():
        task.result()
