"""`MqttConsumer`: the base class for applications of `mqtt` scopes, in the Channels style."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol

from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer

from protocols.dispatch import DirectDispatch
from protocols.mqtt.types import MqttConnectEvent, MqttDisconnectEvent, MqttMessageEvent

# Seconds of events handled back to back before the loop's other work gets a turn: a burst of
# one device's messages must not hold up the other protocols, timers and the database's replies.
# By time, not by count: a turn costs as much as 16 cheap readings (a fifth of the ingest rate).
SLICE = 0.005

__all__ = ["MqttConsumer"]


class Notify(Protocol):
    def __call__(
        self, waiter: asyncio.Future[None], now: Callable[[dict[str, Any]], bool] | None = None, /
    ) -> None: ...


class _GoOn:
    """Awaiting it goes on with a coroutine whose first step ran outside any task and yielded
    `step`: as the coroutine's own task would have, the same futures awaited, cancellation and
    exceptions passed in. (Python 3.12's eager tasks do this; 3.11 has none.)"""

    __slots__ = ("coro", "step")

    def __init__(self, coro: Coroutine[Any, Any, None], step: Any) -> None:
        self.coro, self.step = coro, step

    def __await__(self) -> Generator[Any, Any, None]:
        coro, step = self.coro, self.step
        while True:
            try:
                sent = yield step
            except BaseException as exc:  # thrown in by the task: its cancellation
                try:
                    step = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    step = coro.send(sent)
                except StopIteration:
                    return


async def _go_on(coro: Coroutine[Any, Any, None], step: Any) -> None:
    await _GoOn(coro, step)


class MqttConsumer(DirectDispatch, AsyncConsumer):
    """One instance per device scope; events dispatch by type (`mqtt.message` -> `mqtt_message`).

    Channels' loop (`await_many_dispatch`) makes a task and an `asyncio.wait` per event. With a
    server whose `receive` has `nowait()` and `notify()` (protocols.mqtt.devices), queued events
    are taken directly, one after the other, and an idle instance waits on one future that the
    server or the channel layer's receive sets, with no task per wait. Events are still
    dispatched one at a time, and the next is asked for only once the previous one is handled
    (that is what acknowledges a QoS 1 message). Any other server gets Channels' loop.

    `eager = True`: a message that arrives while the instance waits, with nothing queued before it,
    is handled in the MQTT reader's own call, up to its handler's first real wait (a database
    call, a full layer), and acknowledged there when it needs none; from that wait on it goes on
    in a task, and the next event waits for it. No task wakes for it: 0.1 ms less per reading.
    That first part runs outside any task, so a handler that may use `asyncio.current_task()` or
    `asyncio.timeout()` before its first wait (a Redis client does) must keep the default, False.
    """

    eager = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        nowait: Callable[[], dict[str, Any] | None] | None = getattr(receive, "nowait", None)
        notify: Notify | None = getattr(receive, "notify", None)
        if nowait is None or notify is None:
            await super().__call__(scope, receive, send)
            return
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        self.base_send = send
        with contextlib.suppress(StopConsumer):
            await self._serve(nowait, notify)

    async def _serve(self, nowait: Callable[[], dict[str, Any] | None], notify: Notify) -> None:
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] | None = None
        # A message handled in the MQTT reader's call that went on in a task (or failed there).
        rest: asyncio.Future[None] | BaseException | None = None
        context = contextvars.copy_context()

        def wake_up(_: Any = None) -> None:
            if wake is not None and not wake.done():
                wake.set_result(None)

        def now(event: dict[str, Any]) -> bool:
            # In the reader's call, as a task's first step would run it; True: handled to its end.
            nonlocal rest
            coro = self.dispatch(event)
            try:
                step = context.run(coro.send, None)
            except StopIteration:
                return True
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # this instance's failure, raised in its own task below
                rest = exc
            else:  # it waits for something: its task goes on from there
                rest = loop.create_task(_go_on(coro, step), context=context)
            wake_up()
            return False

        eager = now if self.eager else None

        def listen() -> asyncio.Future[Any] | None:
            if self.channel_layer is None:
                return None
            task = asyncio.ensure_future(self.channel_receive())
            task.add_done_callback(wake_up)
            return task

        layer_task = listen()
        since = loop.time()
        try:
            while True:
                if layer_task is not None and layer_task.done():
                    message = layer_task.result()
                    layer_task = None
                    await self.dispatch(message)
                    layer_task = listen()
                    continue
                event = nowait()
                if event is not None:
                    await self.dispatch(event)
                    if loop.time() - since > SLICE:
                        await asyncio.sleep(0)
                        since = loop.time()
                    continue
                # Nothing queued: wait for the server or the layer, with no task of our own.
                wake = loop.create_future()
                notify(wake, eager)
                try:
                    await wake
                finally:
                    wake = None
                if rest is not None:
                    going_on, rest = rest, None
                    if isinstance(going_on, BaseException):
                        raise going_on
                    await going_on  # the next event after this one
                since = loop.time()
        finally:
            if isinstance(rest, asyncio.Future):  # cancelled between the hand-over and our turn
                rest.cancel()
            if layer_task is not None and not layer_task.done():
                layer_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await layer_task

    async def mqtt_connect(self, event: MqttConnectEvent) -> None:
        """The broker connection is up (again); `session_present` says whether it kept our session."""

    async def mqtt_message(self, event: MqttMessageEvent) -> None:
        """A message on one of the device's topics."""

    async def mqtt_disconnect(self, event: MqttDisconnectEvent) -> None:
        """The broker connection is gone; when `final`, the scope ends."""
        if event["final"]:
            raise StopConsumer()

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        await self.send(
            {"type": "mqtt.publish", "topic": topic, "payload": payload, "qos": qos, "retain": retain}
        )

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        await self.send({"type": "mqtt.subscribe", "topic": topic_filter, "qos": qos})

    async def unsubscribe(self, topic_filter: str) -> None:
        await self.send({"type": "mqtt.unsubscribe", "topic": topic_filter})

    @property
    def device(self) -> str:
        return str(self.scope["device"])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} device={self.scope.get('device')!r}>"
