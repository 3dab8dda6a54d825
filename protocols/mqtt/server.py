"""The MQTT protocol server: one broker connection, one ASGI application instance per device.

Instances are created the daphne way (a queue as `receive`, a bound method as
`send`) before the broker connection opens, so that messages a persistent
session kept while we were away find their instance. A QoS 1/2 message is
acknowledged to the broker only when its instance asks for the next event, that
is once the consumer has handled it: a crash in between means redelivery.

An instance that fails is started again with the same queue, so its device loses only the
message it failed on; one that keeps failing is reported (`on_fault`), never given up.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.ops import logs
from protocols.mqtt.client import AsyncioClient, BrokerAddress
from protocols.mqtt.events import connect_event, validate_outgoing
from protocols.mqtt.routing import topic_matches
from protocols.mqtt.types import MqttMessageEvent, MqttReceiveEvent, MqttScope, MqttVersion

log = logs.mqtt

__all__ = ["Device", "MqttServer", "MqttSettings"]

# MQTT 5 session expiry: keep our subscriptions and queued messages for a week.
SESSION_EXPIRY = 7 * 24 * 3600
# MQTT 5: QoS 1/2 messages the broker may send before we acknowledge one (mosquitto: 20 otherwise).
RECEIVE_MAXIMUM = 1000
# An instance that failed this many times in a row, with no message handled in between, is a fault.
FAILING_AFTER = 3
# An instance that fails before it takes any event is started again after 0.5 s, 1 s, ... up to this.
RESTART_BACKOFF_MAX = 30.0
_failure_log = logs.RateLimit(interval=30.0)


@dataclass(frozen=True)
class Device:
    id: str
    topics: tuple[str, ...]
    lazy: bool = False


@dataclass
class MqttSettings:
    address: BrokerAddress
    client_id: str
    protocol: str = "auto"  # "auto", "5" or "3.1.1"
    status_topic: str = ""
    shared_group: str = ""
    keepalive: int = 30
    connect_timeout: float = 5.0
    backoff_min: float = 0.2
    backoff_max: float = 30.0
    discover: tuple[str, ...] = ()  # filters on which unknown topics get a lazy device
    max_lazy_devices: int = 1000
    lazy_idle: float = 600.0  # a lazy device silent this long ends, and frees its place
    qos: int = 1


@dataclass(eq=False)
class _Delivery:
    mid: int
    qos: int
    generation: int
    holders: int


class _Inbox(asyncio.Queue[tuple[MqttReceiveEvent, "_Delivery | None"]]):
    """An instance's queue, which can also wake a waiter with no task of its own (`_Receive.notify`)."""

    waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: tuple[MqttReceiveEvent, _Delivery | None]) -> None:
        super().put_nowait(item)
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


@dataclass(eq=False)
class _Instance:
    device: Device
    scope: MqttScope
    queue: _Inbox = field(default_factory=lambda: _Inbox())
    task: asyncio.Task[None] | None = None
    taken: _Delivery | None = None
    filters: set[str] = field(default_factory=set)
    last_used: float = 0.0
    # Since its last (re)start: whether the last event it took (until `proven`) was an
    # `mqtt.message`, and whether it handled one (asked for the next event after it).
    took: bool = False
    proven: bool = False
    failures: int = 0  # in a row, with no message handled in between


class MqttServer:
    name = "mqtt"

    def __init__(
        self,
        settings: MqttSettings,
        application: Callable[..., Any],
        devices: list[Device],
        *,
        on_state: Callable[[bool], None] = lambda up: None,
        count: Callable[[str], None] = lambda outcome: None,
        on_fault: Callable[[str, str | None], None] = lambda device, detail: None,
    ) -> None:
        self.settings = settings
        self.application = application
        self.devices = devices
        self.on_state = on_state
        self.count = count
        # (device id, what fails) once its instance keeps failing; (device id, None) when an
        # instance, after each start, has handled a message.
        self.on_fault = on_fault
        self.connected = asyncio.Event()
        self.protocol: MqttVersion = "3.1.1" if settings.protocol == "3.1.1" else "5"
        self.session_present = False
        self._instances: list[_Instance] = []
        self._exact: dict[str, list[_Instance]] = {}
        self._wild: list[tuple[str, _Instance]] = []
        self._lazy: dict[str, _Instance] = {}
        self._lazy_sweep: asyncio.TimerHandle | None = None
        self._generation = 0
        self._client: AsyncioClient | None = None
        self._lost: asyncio.Future[str] | None = None
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._stopping = False
        self._acks: list[int] = []  # QoS 1 mids handled this loop turn, acknowledged at its end
        self._acks_due: asyncio.Handle | None = None

    # Lifecycle

    async def serve(self, stop: asyncio.Event) -> None:
        """Connect, reconnect with back-off until `stop` is set, then shut down in order."""
        for device in self.devices:
            self._add_instance(device)
        delay = self.settings.backoff_min
        stop_wait: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                try:
                    await self._connect()
                except (OSError, ConnectionRefusedError, _ConnectFailed) as err:
                    log.warning("broker %s: %s; retrying in %.1fs", self.settings.address, err, delay)
                    await asyncio.wait([stop_wait], timeout=delay)
                    delay = min(delay * 2, self.settings.backoff_max) * random.uniform(0.8, 1.2)
                    continue
                delay = self.settings.backoff_min
                assert self._lost is not None
                await asyncio.wait([stop_wait, self._lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            await self._shutdown()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        v5 = self.protocol == "5"
        client = self._client
        if client is None or (client.protocol == paho.MQTTv5) != v5:
            client = self._make_client(loop, v5)
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        kwargs: dict[str, Any] = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY
            props.ReceiveMaximum = RECEIVE_MAXIMUM
            kwargs = {"clean_start": False, "properties": props}
        await client.connect_async_io(s.address, s.keepalive, s.connect_timeout, **kwargs)
        try:
            rc = await asyncio.wait_for(asyncio.shield(self._connack), s.connect_timeout)
        except TimeoutError:
            client.disconnect()
            if v5 and s.protocol == "auto":
                # Some 3.1.1-only brokers (amqtt) never answer a v5 CONNECT.
                log.info("no answer to MQTT 5 CONNECT; falling back to 3.1.1")
                self.protocol = "3.1.1"
            raise _ConnectFailed("no CONNACK in time") from None
        except ConnectionError as err:
            if v5 and s.protocol == "auto":
                # A 3.1.1-only broker may just drop a v5 CONNECT.
                log.info("broker closed the MQTT 5 connection (%s); falling back to 3.1.1", err)
                self.protocol = "3.1.1"
            raise _ConnectFailed(str(err)) from None
        if rc.is_failure:
            if v5 and s.protocol == "auto" and rc.value in (1, 132):
                log.info("broker does not speak MQTT 5; falling back to 3.1.1")
                self.protocol = "3.1.1"
            client.disconnect()
            raise _ConnectFailed(f"broker refused the connection: {rc}")

    def _make_client(self, loop: asyncio.AbstractEventLoop, v5: bool) -> AsyncioClient:
        s = self.settings
        kwargs: dict[str, Any] = {"client_id": s.client_id, "manual_ack": True, "reconnect_on_failure": False}
        if v5:
            kwargs["protocol"] = paho.MQTTv5
        else:
            kwargs.update(protocol=paho.MQTTv311, clean_session=False)
        client = AsyncioClient(loop, **kwargs)
        # Enough room for alert bursts and rule actions published during an outage.
        client.max_queued_messages_set(10_000)
        client.max_inflight_messages_set(100)
        if s.status_topic:
            client.will_set(s.status_topic, b"offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish_received = self._on_publish
        self._client = client
        return client

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._lazy_sweep is not None:
            self._lazy_sweep.cancel()
        client = self._client
        if client is not None and client.is_connected():
            self._send_acks()
            if self.settings.status_topic:
                info = client.publish(self.settings.status_topic, b"offline", qos=1, retain=True)
                await self._wait_published(info, 2.0)
            client.disconnect()
        self._set_down("server stopping")
        for inst in self._instances:
            inst.queue.put_nowait(
                ({"type": "mqtt.disconnect", "reason": "server stopping", "final": True}, None)
            )
        tasks = [i.task for i in self._instances if i.task is not None and not i.task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    async def _wait_published(self, info: paho.MQTTMessageInfo, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        # paho offers no awaitable for this; a short poll, bounded, at shutdown only.
        loop = asyncio.get_running_loop()
        while not info.is_published() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    # paho callbacks (on the loop thread: the loop drives paho's socket)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(rc)
        if rc.is_failure:
            return
        self._generation += 1
        self.session_present = bool(getattr(flags, "session_present", False))
        if self.settings.shared_group and self.protocol != "5" and self._generation == 1:
            log.warning(
                "mqtt.shared_group is ignored on MQTT %s: shared subscriptions need MQTT 5, "
                "so every MQTT process of this group gets every sensor message",
                self.protocol,
            )
        filters = self._all_filters()
        if filters:
            client.subscribe([(self._shared(f), self.settings.qos) for f in filters])
        if self.settings.status_topic:
            client.publish(self.settings.status_topic, b"online", qos=1, retain=True)
        log.info(
            "connected to %s (MQTT %s, session %s, %d filters%s)",
            self.settings.address,
            self.protocol,
            "resumed" if self.session_present else "new",
            len(filters),
            f", shared as {self._shared('…')}" if self._shared("…") != "…" else "",
        )
        self.connected.set()
        self.on_state(True)
        for inst in self._instances:
            inst.queue.put_nowait((connect_event(self.protocol, self.session_present), None))

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        reason = str(rc)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionError(reason))
            self._connack.exception()  # retrieved here so an unawaited one is not reported
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(reason)
        self._acks.clear()  # mids of the lost connection: the broker sends them again
        if self.connected.is_set():
            if not self._stopping:
                log.warning("lost the broker connection: %s", reason)
            self._set_down(reason)
            if not self._stopping:
                for inst in self._instances:
                    inst.queue.put_nowait(
                        ({"type": "mqtt.disconnect", "reason": reason, "final": False}, None)
                    )

    def _set_down(self, reason: str) -> None:
        if self.connected.is_set():
            self.connected.clear()
            self.on_state(False)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        # paho's path: QoS 2, MQTT 5 messages with properties, all without the fast path (protocols._paho).
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self._bad_topic(msg.mid, msg.qos)
            return
        props: dict[str, Any] = {}
        if msg.properties is not None and hasattr(msg.properties, "json"):
            props = msg.properties.json()
        self._deliver(topic, bytes(msg.payload), msg.qos, bool(msg.retain), bool(msg.dup), msg.mid, props)

    def _on_publish(self, topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool, mid: int) -> None:
        # The client's fast path: a PUBLISH without MQTT 5 properties, no MQTTMessage made.
        try:
            text = topic.decode("utf-8")
        except UnicodeDecodeError:
            self._bad_topic(mid, qos)
            return
        self._deliver(text, payload, qos, retain, dup, mid, None)

    def _bad_topic(self, mid: int, qos: int) -> None:
        self.count("bad_topic")
        log.warning("dropped a message whose topic is not UTF-8")
        self._ack(mid, qos, self._generation)

    def _deliver(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        dup: bool,
        mid: int,
        props: dict[str, Any] | None,
    ) -> None:
        targets = self._exact.get(topic)
        if targets is None or self._wild:
            targets = self._route(topic)
        if not targets:
            self.count("unrouted")
            self._ack(mid, qos, self._generation)
            return
        delivery = None
        if qos > 0:
            delivery = _Delivery(mid, qos, self._generation, len(targets))
        for inst in targets:
            event: MqttMessageEvent = {
                "type": "mqtt.message",
                "topic": topic,
                "payload": payload,
                "qos": qos,
                "retain": retain,
                "dup": dup,
                "properties": {} if props is None else props,
            }
            inst.queue.put_nowait((event, delivery))

    # Devices after a reload

    def update_devices(self, devices: list[Device]) -> None:
        """Start instances for new devices, end those of removed ones, follow changed topics."""
        current = {i.device.id: i for i in self._instances if not i.device.lazy}
        wanted = {d.id: d for d in devices}
        for device_id, inst in current.items():
            device = wanted.get(device_id)
            if device is None:
                self._remove_instance(inst)
            elif device.topics != inst.device.topics:
                for topic_filter in set(inst.device.topics) - set(device.topics):
                    self._remove_filter(inst, topic_filter)
                for topic_filter in device.topics:
                    if topic_filter not in inst.filters:
                        self._add_filter(inst, topic_filter)
                        self._subscribe_now(topic_filter)
                inst.device = device
        for device_id, device in wanted.items():
            if device_id not in current:
                inst = self._add_instance(device)
                for topic_filter in device.topics:
                    self._subscribe_now(topic_filter)
                if self.connected.is_set():
                    inst.queue.put_nowait((connect_event(self.protocol, self.session_present), None))
        self.devices = devices

    def _remove_instance(self, inst: _Instance) -> None:
        for topic_filter in list(inst.filters):
            self._remove_filter(inst, topic_filter)
        self._instances.remove(inst)
        # What it holds is handled (or dropped by the application) and acknowledged, then it ends.
        inst.queue.put_nowait(({"type": "mqtt.disconnect", "reason": "device removed", "final": True}, None))

    def _subscribe_now(self, topic_filter: str) -> None:
        if self._client is not None and self.connected.is_set():
            self._client.subscribe(self._shared(topic_filter), self.settings.qos)

    # Routing and instances

    def _route(self, topic: str) -> list[_Instance]:
        targets = list(self._exact.get(topic, ()))
        for topic_filter, inst in self._wild:
            if inst not in targets and topic_matches(topic_filter, topic):
                targets.append(inst)
        if not targets and self.settings.discover:
            lazy = self._lazy.get(topic)
            if lazy is None and any(topic_matches(f, topic) for f in self.settings.discover):
                lazy = self._add_lazy(topic)
            if lazy is not None:
                lazy.last_used = time.monotonic()
                targets.append(lazy)
        return targets

    def _add_lazy(self, topic: str) -> _Instance | None:
        if len(self._lazy) >= self.settings.max_lazy_devices:
            self.count("lazy_cap")
            return None
        inst = self._add_instance(Device(id=topic, topics=(topic,), lazy=True), subscribe=False)
        self._lazy[topic] = inst
        if self._lazy_sweep is None:
            self._lazy_sweep = asyncio.get_running_loop().call_later(self.settings.lazy_idle / 2, self._sweep)
        if self.connected.is_set():
            inst.queue.put_nowait((connect_event(self.protocol, self.session_present), None))
        return inst

    def _sweep(self) -> None:
        """End lazy devices that fell silent: a wildcard route's scopes are capped and they expire."""
        self._lazy_sweep = None
        now = time.monotonic()
        for topic, inst in list(self._lazy.items()):
            if now - inst.last_used >= self.settings.lazy_idle and inst.queue.empty():
                del self._lazy[topic]
                self._remove_instance(inst)
                self.count("lazy_expired")
        if self._lazy:
            self._lazy_sweep = asyncio.get_running_loop().call_later(self.settings.lazy_idle / 2, self._sweep)

    def _add_instance(self, device: Device, subscribe: bool = True) -> _Instance:
        s = self.settings
        scope: MqttScope = {
            "type": "mqtt",
            "asgi": {"version": "3.0", "spec_version": "1.0"},
            "device": device.id,
            "topic": device.topics[0],
            "topics": list(device.topics),
            "lazy": device.lazy,
            "client_id": s.client_id,
            "broker": (s.address.host, s.address.port),
        }
        inst = _Instance(device=device, scope=scope)
        self._instances.append(inst)
        if subscribe:
            for topic_filter in device.topics:
                self._add_filter(inst, topic_filter)
        self._start(inst)
        return inst

    def _start(self, inst: _Instance) -> None:
        if self._stopping or inst not in self._instances:
            return  # a restart that came due after the end
        inst.took = inst.proven = False
        coro = self.application(dict(inst.scope), _Receive(self, inst), partial(self._send, inst))
        inst.task = asyncio.ensure_future(coro)
        inst.task.add_done_callback(partial(self._instance_done, inst))

    def _instance_done(self, inst: _Instance, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        self.count("app_error")
        inst.failures += 1
        device = inst.device.id
        allowed, held = _failure_log.allow(device)
        if allowed:
            log.error(
                "application for MQTT device %r failed (%d in a row%s): %r",
                device,
                inst.failures,
                f", {held} failures not logged" if held else "",
                exc,
                exc_info=exc,
            )
        # The message it choked on is acknowledged: redelivering it would crash it again.
        self._release(inst)
        if self._stopping:
            return
        if inst not in self._instances:
            # Its device was removed: what it still holds is acknowledged, or the broker's
            # in-flight window would fill up and stall every other device.
            while not inst.queue.empty():
                _, inst.taken = inst.queue.get_nowait()
                self._release(inst)
            if inst.failures >= FAILING_AFTER:
                self.on_fault(device, None)  # gone, so no longer failing
            return
        if inst.failures == FAILING_AFTER:
            log.error(
                "MQTT device %r keeps failing (%d times in a row); it is started again for each message",
                device,
                inst.failures,
            )
            self.on_fault(device, f"{type(exc).__name__}: {str(exc)[:200]}")
        # Started again at once when it failed on an event: that event is gone, the queue moves on,
        # and what waits keeps its order. One that fails before taking any waits longer each time.
        delay = 0.0 if inst.took else min(0.5 * 2 ** (inst.failures - 1), RESTART_BACKOFF_MAX)
        asyncio.get_running_loop().call_later(delay, self._start, inst)

    def _proven(self, inst: _Instance) -> None:
        inst.proven = True
        inst.failures = 0
        self.on_fault(inst.device.id, None)

    async def _receive(self, inst: _Instance) -> MqttReceiveEvent:
        # Asking for the next event means the previous one was handled.
        self._release(inst)
        if inst.took and not inst.proven:
            self._proven(inst)
        event, delivery = await inst.queue.get()
        inst.taken = delivery
        if not inst.proven:
            inst.took = event["type"] == "mqtt.message"
        return event

    def _release(self, inst: _Instance) -> None:
        delivery, inst.taken = inst.taken, None
        if delivery is not None:
            delivery.holders -= 1
            if delivery.holders == 0:
                self._ack(delivery.mid, delivery.qos, delivery.generation)

    def _ack(self, mid: int, qos: int, generation: int) -> None:
        # A mid from an earlier connection means nothing now: the broker redelivers it.
        if qos and self._client is not None and generation == self._generation and self.connected.is_set():
            if qos == 1:
                # The PUBACKs of a loop turn leave together (one packet queued, one send).
                self._acks.append(mid)
                if self._acks_due is None:
                    self._acks_due = asyncio.get_running_loop().call_soon(self._send_acks)
            else:
                self._client.ack(mid, qos)

    def _send_acks(self) -> None:
        self._acks_due = None
        mids, self._acks = self._acks, []
        if self._client is not None and self.connected.is_set():
            self._client.ack_many(mids)

    async def _send(self, inst: _Instance, event: dict[str, Any]) -> None:
        checked: dict[str, Any] = dict(validate_outgoing(event))
        kind = checked["type"]
        if kind == "mqtt.publish":
            client = self._client
            qos = checked.get("qos", 1)
            if client is None:
                self.count("publish_dropped")
                log.warning("publish to %s dropped: never connected", checked["topic"])
                return
            info = client.publish(
                checked["topic"], bytes(checked["payload"]), qos, checked.get("retain", False)
            )
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN) or (
                info.rc == paho.MQTT_ERR_NO_CONN and qos == 0
            ):
                self.count("publish_dropped")
                log.warning("publish to %s dropped: %s", checked["topic"], paho.error_string(info.rc))
        elif kind == "mqtt.subscribe":
            if checked["topic"] not in inst.filters:
                self._add_filter(inst, checked["topic"])
                if self._client is not None and self.connected.is_set():
                    self._client.subscribe(self._shared(checked["topic"]), checked.get("qos", 1))
        else:
            self._remove_filter(inst, checked["topic"])

    def _add_filter(self, inst: _Instance, topic_filter: str) -> None:
        inst.filters.add(topic_filter)
        if "+" in topic_filter or "#" in topic_filter:
            self._wild.append((topic_filter, inst))
        else:
            self._exact.setdefault(topic_filter, []).append(inst)

    def _remove_filter(self, inst: _Instance, topic_filter: str) -> None:
        if topic_filter not in inst.filters:
            return
        inst.filters.discard(topic_filter)
        self._wild = [(f, i) for f, i in self._wild if not (i is inst and f == topic_filter)]
        holders = self._exact.get(topic_filter)
        if holders and inst in holders:
            holders.remove(inst)
            if not holders:
                del self._exact[topic_filter]
        if topic_filter not in self._all_filters() and self._client is not None and self.connected.is_set():
            self._client.unsubscribe(self._shared(topic_filter))

    def _all_filters(self) -> list[str]:
        filters = dict.fromkeys(self._exact)
        filters.update(dict.fromkeys(f for f, _ in self._wild))
        filters.update(dict.fromkeys(self.settings.discover))
        return list(filters)

    def _shared(self, topic_filter: str) -> str:
        group = self.settings.shared_group
        if group and self.protocol == "5" and not topic_filter.startswith("$"):
            return f"$share/{group}/{topic_filter}"
        return topic_filter


class _ConnectFailed(Exception):
    pass


class _Receive:
    """An instance's `receive`; `receive.nowait()` (an extension) returns a queued event without waiting.

    `nowait()` returns None when nothing is queued. Like `receive()`, calling it means the previous
    event was handled (it is acknowledged). An application that handles a burst then takes each
    queued event without a task and a wake-up of its own (`MqttConsumer` does), and when none is
    queued, `notify(future)` has the server set the future's result at the next one.
    """

    __slots__ = ("inst", "server")

    def __init__(self, server: MqttServer, inst: _Instance) -> None:
        self.server, self.inst = server, inst

    def __call__(self) -> Coroutine[Any, Any, MqttReceiveEvent]:
        return self.server._receive(self.inst)

    def notify(self, waiter: asyncio.Future[None]) -> None:
        """Set `waiter`'s result once an event is queued (at once if one is)."""
        queue = self.inst.queue
        if queue.empty():
            queue.waiter = waiter
        elif not waiter.done():
            waiter.set_result(None)

    def nowait(self) -> MqttReceiveEvent | None:
        inst = self.inst
        self.server._release(inst)
        if inst.took and not inst.proven:
            self.server._proven(inst)
        try:
            event, delivery = inst.queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        inst.taken = delivery
        if not inst.proven:
            inst.took = event["type"] == "mqtt.message"
        return event
