"""The MQTT server's devices: one application instance each, the topic filters that reach it, and
the acknowledgement of a QoS 1/2 message once every instance it went to has handled it.

An instance that fails is started again with the same queue, so its device loses only the
message it failed on; one that keeps failing is reported (`on_fault`), never given up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gateway.ops import logs
from protocols.backoff import Backoff
from protocols.instances import Instance, Supervisor
from protocols.mqtt.routing import topic_matches
from protocols.mqtt.types import MqttReceiveEvent, MqttScope

log = logs.mqtt

__all__ = ["Delivery", "Device", "DeviceInstance", "Devices"]

# An instance that failed this many times in a row, with no message handled in between, is a fault.
FAILING_AFTER = 3
# An instance that fails before it takes any event is started again after 0.5 s, 1 s, ... up to this.
RESTART_BACKOFF_MAX = 30.0
RESTART_BACKOFF = Backoff(0.5, RESTART_BACKOFF_MAX)


@dataclass(frozen=True)
class Device:
    id: str
    topics: tuple[str, ...]
    lazy: bool = False


@dataclass(eq=False)
class Delivery:
    """A QoS 1/2 message, acknowledged once each of its `holders` has handled it."""

    mid: int
    qos: int
    generation: int  # of the connection it came on: a later connection's broker sends it again
    holders: int


Item = tuple[MqttReceiveEvent, "Delivery | None"]


class Inbox(asyncio.Queue[Item]):
    """An instance's queue, which can also wake a waiter with no task of its own (`Receive.notify`),
    or hand a message to the waiting application in the server's own call (`offer`)."""

    waiter: asyncio.Future[None] | None = None
    # Set with the waiter by an application that takes a message in the server's call (Receive.notify).
    take: Callable[[Item], None] | None = None

    def put_nowait(self, item: Item) -> None:
        super().put_nowait(item)
        waiter, self.waiter, self.take = self.waiter, None, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def offer(self, item: Item) -> None:
        """An `mqtt.message`: handed over at once when the application waits for it and nothing is
        queued before it, else queued as any event."""
        take, waiter = self.take, self.waiter
        if take is not None and waiter is not None and not waiter.done() and self.empty():
            self.take = None  # one at a time: a message that comes meanwhile is queued
            take(item)
        else:
            self.put_nowait(item)


@dataclass(eq=False)
class DeviceInstance(Instance):
    device: Device
    queue: Inbox = field(default_factory=lambda: Inbox())
    taken: Delivery | None = None
    filters: set[str] = field(default_factory=set)
    last_used: float = 0.0
    removed: bool = False
    # Since its last (re)start: whether the last event it took (until `proven`) was an
    # `mqtt.message`, and whether it handled one (asked for the next event after it).
    took: bool = False
    proven: bool = False


class Devices:
    """Every device instance of one MQTT server, and the filters it subscribes for them."""

    def __init__(
        self,
        application: Callable[..., Any],
        client_id: str,
        broker: tuple[str, int],
        *,
        send: Callable[[DeviceInstance, dict[str, Any]], Coroutine[Any, Any, None]],
        ack: Callable[[int, int, int], None],
        greeting: Callable[[], MqttReceiveEvent | None],
        subscribe: Callable[[str], None],
        unsubscribe: Callable[[str], None],
        discover: tuple[str, ...] = (),
        max_lazy: int = 1000,
        lazy_idle: float = 600.0,
        count: Callable[[str], None] = lambda outcome: None,
        on_fault: Callable[[str, str | None], None] = lambda device, detail: None,
    ) -> None:
        """`ack(mid, qos, generation)` acknowledges a message to the broker; `greeting()` is the
        `mqtt.connect` event while connected, else None; `subscribe(filter)` and
        `unsubscribe(filter)` act on the broker session while it is connected."""
        self.client_id, self.broker = client_id, broker
        self.ack = ack
        self.greeting = greeting
        self.subscribe, self.unsubscribe = subscribe, unsubscribe
        self.discover, self.max_lazy, self.lazy_idle = discover, max_lazy, lazy_idle
        self.count = count
        self.on_fault = on_fault
        self.instances: list[DeviceInstance] = []
        # Who hears a topic: exact filters by topic, wildcard ones in a list (both changed in place).
        self.exact: dict[str, list[DeviceInstance]] = {}
        self.wild: list[tuple[str, DeviceInstance]] = []
        self._lazy: dict[str, DeviceInstance] = {}
        self._lazy_sweep: asyncio.TimerHandle | None = None
        self._supervisor: Supervisor[DeviceInstance] = Supervisor(
            application,
            receive=lambda inst: Receive(self, inst),
            send=lambda inst: partial(send, inst),
            failed=self._failed,
            describe=lambda inst: f"MQTT device {inst.device.id!r}",
            log=log,
        )

    # Devices come and go

    def add(self, device: Device, subscribe: bool = True) -> DeviceInstance:
        scope: MqttScope = {
            "type": "mqtt",
            "asgi": {"version": "3.0", "spec_version": "1.0"},
            "device": device.id,
            "topic": device.topics[0],
            "topics": list(device.topics),
            "lazy": device.lazy,
            "client_id": self.client_id,
            "broker": self.broker,
        }
        inst = DeviceInstance(device=device, scope=scope)
        self.instances.append(inst)
        if subscribe:
            for topic_filter in device.topics:
                self.add_filter(inst, topic_filter)
        self._supervisor.start(inst)
        return inst

    def update(self, devices: list[Device]) -> None:
        """Start instances for new devices, end those of removed ones, follow changed topics."""
        current = {i.device.id: i for i in self.instances if not i.device.lazy}
        wanted = {d.id: d for d in devices}
        for device_id, inst in current.items():
            device = wanted.get(device_id)
            if device is None:
                self._remove(inst)
            elif device.topics != inst.device.topics:
                for topic_filter in set(inst.device.topics) - set(device.topics):
                    self.remove_filter(inst, topic_filter)
                for topic_filter in device.topics:
                    if topic_filter not in inst.filters:
                        self.add_filter(inst, topic_filter)
                        self.subscribe(topic_filter)
                inst.device = device
        for device_id, device in wanted.items():
            if device_id not in current:
                inst = self.add(device)
                for topic_filter in device.topics:
                    self.subscribe(topic_filter)
                self._greet(inst)

    def _remove(self, inst: DeviceInstance) -> None:
        for topic_filter in list(inst.filters):
            self.remove_filter(inst, topic_filter)
        self.instances.remove(inst)
        inst.removed = True
        # What it holds is handled (or dropped by the application) and acknowledged, then it ends.
        inst.queue.put_nowait(({"type": "mqtt.disconnect", "reason": "device removed", "final": True}, None))

    def _greet(self, inst: DeviceInstance) -> None:
        event = self.greeting()
        if event is not None:
            inst.queue.put_nowait((event, None))

    def greet_all(self) -> None:
        """Connected (again): every instance hears of it."""
        for inst in self.instances:
            self._greet(inst)

    def tell_all(self, event: MqttReceiveEvent) -> None:
        for inst in self.instances:
            inst.queue.put_nowait((event.copy(), None))  # its application owns the event it receives

    async def close(self, timeout: float) -> None:
        """Tell every instance the server stops; wait at most `timeout` for them to end, then cancel."""
        self.stop()
        self.tell_all({"type": "mqtt.disconnect", "reason": "server stopping", "final": True})
        await self._supervisor.close(timeout)

    def stop(self) -> None:
        """No instance starts again, and lazy ones no longer expire: the server stops."""
        self._supervisor.stop()
        if self._lazy_sweep is not None:
            self._lazy_sweep.cancel()

    # Topics to instances

    def route(self, topic: str) -> list[DeviceInstance]:
        targets = list(self.exact.get(topic, ()))
        for topic_filter, inst in self.wild:
            if inst not in targets and topic_matches(topic_filter, topic):
                targets.append(inst)
        if not targets and self.discover:
            lazy = self._lazy.get(topic)
            if lazy is None and any(topic_matches(f, topic) for f in self.discover):
                lazy = self._add_lazy(topic)
            if lazy is not None:
                lazy.last_used = time.monotonic()
                targets.append(lazy)
        return targets

    def _add_lazy(self, topic: str) -> DeviceInstance | None:
        if len(self._lazy) >= self.max_lazy:
            self.count("lazy_cap")
            return None
        inst = self.add(Device(id=topic, topics=(topic,), lazy=True), subscribe=False)
        self._lazy[topic] = inst
        if self._lazy_sweep is None:
            self._lazy_sweep = asyncio.get_running_loop().call_later(self.lazy_idle / 2, self._sweep)
        self._greet(inst)
        return inst

    def _sweep(self) -> None:
        """End lazy devices that fell silent: a wildcard route's scopes are capped and they expire."""
        self._lazy_sweep = None
        now = time.monotonic()
        for topic, inst in list(self._lazy.items()):
            if now - inst.last_used >= self.lazy_idle and inst.queue.empty():
                del self._lazy[topic]
                self._remove(inst)
                self.count("lazy_expired")
        if self._lazy:
            self._lazy_sweep = asyncio.get_running_loop().call_later(self.lazy_idle / 2, self._sweep)

    def add_filter(self, inst: DeviceInstance, topic_filter: str) -> None:
        inst.filters.add(topic_filter)
        if "+" in topic_filter or "#" in topic_filter:
            self.wild.append((topic_filter, inst))
        else:
            self.exact.setdefault(topic_filter, []).append(inst)

    def remove_filter(self, inst: DeviceInstance, topic_filter: str) -> None:
        if topic_filter not in inst.filters:
            return
        inst.filters.discard(topic_filter)
        self.wild[:] = [(f, i) for f, i in self.wild if not (i is inst and f == topic_filter)]
        holders = self.exact.get(topic_filter)
        if holders and inst in holders:
            holders.remove(inst)
            if not holders:
                del self.exact[topic_filter]
        if topic_filter not in self.filters():
            self.unsubscribe(topic_filter)

    def filters(self) -> list[str]:
        """Every filter the session subscribes, each once."""
        filters = dict.fromkeys(self.exact)
        filters.update(dict.fromkeys(f for f, _ in self.wild))
        filters.update(dict.fromkeys(self.discover))
        return list(filters)

    # Events in, and acknowledgements

    async def _receive(self, inst: DeviceInstance) -> MqttReceiveEvent:
        # Asking for the next event means the previous one was handled.
        self.release(inst)
        if inst.took and not inst.proven:
            self._proven(inst)
        event, delivery = await inst.queue.get()
        inst.taken = delivery
        if not inst.proven:
            inst.took = event["type"] == "mqtt.message"
        return event

    def release(self, inst: DeviceInstance) -> None:
        delivery, inst.taken = inst.taken, None
        if delivery is not None:
            delivery.holders -= 1
            if delivery.holders == 0:
                self.ack(delivery.mid, delivery.qos, delivery.generation)

    def _proven(self, inst: DeviceInstance) -> None:
        inst.proven = True
        inst.failures = 0
        self.on_fault(inst.device.id, None)

    def _failed(self, inst: DeviceInstance, exc: BaseException) -> float | None:
        """The supervisor's policy: how soon `inst` starts again, with the same queue."""
        self.count("app_error")
        # The message it choked on is acknowledged: redelivering it would crash it again.
        self.release(inst)
        if self._supervisor.closed:
            return None
        device = inst.device.id
        if inst.removed:
            # What it still holds is acknowledged, or the broker's in-flight window would fill
            # up and stall every other device.
            while not inst.queue.empty():
                _, inst.taken = inst.queue.get_nowait()
                self.release(inst)
            if inst.failures >= FAILING_AFTER:
                self.on_fault(device, None)  # gone, so no longer failing
            return None
        if inst.failures == FAILING_AFTER:
            log.error(
                "MQTT device %r keeps failing (%d times in a row); it is started again for each message",
                device,
                inst.failures,
            )
            self.on_fault(device, f"{type(exc).__name__}: {str(exc)[:200]}")
        # Started again at once when it failed on an event: that event is gone, the queue moves on,
        # and what waits keeps its order. One that fails before taking any waits longer each time.
        delay = 0.0 if inst.took else RESTART_BACKOFF.delay(inst.failures)
        inst.took = inst.proven = False
        return delay


class Receive:
    """An instance's `receive`; `receive.nowait()` (an extension) returns a queued event without waiting.

    `nowait()` returns None when nothing is queued. Like `receive()`, calling it means the previous
    event was handled (it is acknowledged). An application that handles a burst then takes each
    queued event without a task and a wake-up of its own (`MqttConsumer` does), and when none is
    queued, `notify(future)` has the server set the future's result at the next one.
    """

    __slots__ = ("devices", "inst")

    def __init__(self, devices: Devices, inst: DeviceInstance) -> None:
        self.devices, self.inst = devices, inst

    def __call__(self) -> Coroutine[Any, Any, MqttReceiveEvent]:
        return self.devices._receive(self.inst)

    def notify(
        self, waiter: asyncio.Future[None], now: Callable[[MqttReceiveEvent], bool] | None = None
    ) -> None:
        """Set `waiter`'s result once an event is queued (at once if one is).

        With `now`, a message that arrives while the application waits is handed to `now(event)`
        in the server's own call (the MQTT reader's), with no task to wake: True when it was
        handled to its end there (it is acknowledged, and the waiter keeps waiting for the next);
        False when it goes on elsewhere, and the application sets the waiter and asks for the next
        event once it is done, as after any other. `now` must not block; one at a time.
        """
        queue = self.inst.queue
        if queue.empty():
            queue.waiter = waiter
            queue.take = None if now is None else partial(self._take, waiter, now)
        elif not waiter.done():
            waiter.set_result(None)

    def _take(
        self, waiter: asyncio.Future[None], now: Callable[[MqttReceiveEvent], bool], item: Item
    ) -> None:
        event, delivery = item
        inst, devices = self.inst, self.devices
        inst.taken = delivery  # as nowait() takes it
        if not inst.proven:
            inst.took = event["type"] == "mqtt.message"
        if not now(event):
            return
        # Handled: what the application's next nowait() would do, and wait on for the next one.
        devices.release(inst)
        if inst.took and not inst.proven:
            devices._proven(inst)
        queue = inst.queue
        if queue.waiter is waiter and not waiter.done() and queue.empty():
            queue.take = partial(self._take, waiter, now)

    def nowait(self) -> MqttReceiveEvent | None:
        inst = self.inst
        self.devices.release(inst)
        if inst.took and not inst.proven:
            self.devices._proven(inst)
        try:
            event, delivery = inst.queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        inst.taken = delivery
        if not inst.proven:
            inst.took = event["type"] == "mqtt.message"
        return event
