"""`MqttConsumer`: the base class for applications of `mqtt` scopes, in the Channels style."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any

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


class MqttConsumer(DirectDispatch, AsyncConsumer):
    """One instance per device scope; events dispatch by type (`mqtt.message` -> `mqtt_message`).

    Channels' loop (`await_many_dispatch`) makes a task and an `asyncio.wait` per event. With a
    server whose `receive` has `nowait()` and `notify()` (protocols.mqtt.devices), queued events
    are taken directly, one after the other, and an idle instance waits on one future that the
    server or the channel layer's receive sets, with no task per wait. Events are still
    dispatched one at a time, and the next is asked for only once the previous one is handled
    (that is what acknowledges a QoS 1 message). Any other server gets Channels' loop.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        nowait: Callable[[], dict[str, Any] | None] | None = getattr(receive, "nowait", None)
        notify: Callable[[asyncio.Future[None]], None] | None = getattr(receive, "notify", None)
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

    async def _serve(
        self, nowait: Callable[[], dict[str, Any] | None], notify: Callable[[asyncio.Future[None]], None]
    ) -> None:
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] | None = None

        def wake_up(_: Any = None) -> None:
            if wake is not None and not wake.done():
                wake.set_result(None)

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
                notify(wake)
                try:
                    await wake
                finally:
                    wake = None
                since = loop.time()
        finally:
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
