"""The MQTT protocol server: one broker connection, one ASGI application instance per device.

Instances are created the daphne way (a queue as `receive`, a bound method as
`send`) before the broker connection opens, so that messages a persistent
session kept while we were away find their instance. A QoS 1/2 message is
acknowledged to the broker only when its instance asks for the next event, that
is once the consumer has handled it: a crash in between means redelivery.
The instances, their topics and their failures are protocols.mqtt.devices'.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.ops import logs
from protocols.backoff import Backoff
from protocols.mqtt.client import AsyncioClient, BrokerAddress
from protocols.mqtt.devices import Delivery, Device, DeviceInstance, Devices
from protocols.mqtt.events import connect_event, validate_outgoing
from protocols.mqtt.types import MqttMessageEvent, MqttReceiveEvent, MqttVersion

log = logs.mqtt

__all__ = ["Device", "MqttServer", "MqttSettings"]

# MQTT 5 session expiry: keep our subscriptions and queued messages for a week.
SESSION_EXPIRY = 7 * 24 * 3600
# MQTT 5: QoS 1/2 messages the broker may send before we acknowledge one (mosquitto: 20 otherwise).
RECEIVE_MAXIMUM = 1000
# Our QoS 1 PUBLISHes awaiting PUBACK (alert events, actions); fewer when the broker's Receive
# Maximum says so. The rest wait in paho's queue (10,000).
MAX_INFLIGHT = 100
# Reconnects wait backoff_min, doubling to backoff_max, each spread by this fraction either way.
RECONNECT_JITTER = 0.2


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
    # Filters every process of a shared group must hear in full (retained discovery): never shared.
    not_shared: tuple[str, ...] = ()


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
        """`on_fault(device id, what fails)` once a device's instance keeps failing; (device id, None)
        once it has handled a message after each start."""
        self.settings = settings
        self.on_state = on_state
        self.count = count
        self.connected = asyncio.Event()
        self.protocol: MqttVersion = "3.1.1" if settings.protocol == "3.1.1" else "5"
        self.session_present = False
        self._configured = devices
        self._started = False
        self._devices = Devices(
            application,
            settings.client_id,
            (settings.address.host, settings.address.port),
            send=self._send,
            ack=self._ack,
            greeting=self._greeting,
            subscribe=self._subscribe,
            unsubscribe=self._unsubscribe,
            discover=settings.discover,
            max_lazy=settings.max_lazy_devices,
            lazy_idle=settings.lazy_idle,
            count=count,
            on_fault=on_fault,
        )
        # The routing tables, changed in place: one attribute less on the path of every message.
        self._exact, self._wild = self._devices.exact, self._devices.wild
        self._generation = 0
        self._client: AsyncioClient | None = None
        self._lost: asyncio.Future[str] | None = None
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._stopping = False
        self._acks: list[int] = []  # QoS 1 mids handled this loop turn, acknowledged at its end
        self._acks_due: asyncio.Handle | None = None

    # Lifecycle

    @property
    def ready(self) -> asyncio.Event:
        return self.connected

    async def start(self) -> None:
        """Every configured device's instance, before the session brings what it kept for them."""
        self._started = True
        for device in self._configured:
            self._devices.add(device)

    async def serve(self, stop: asyncio.Event) -> None:
        """Connect, reconnect with back-off until `stop` is set, then shut down in order."""
        if not self._started:
            await self.start()  # a server run on its own, not by `Servers`
        backoff = Backoff(self.settings.backoff_min, self.settings.backoff_max, RECONNECT_JITTER)
        stop_wait: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                try:
                    await self._connect()
                except (OSError, ConnectionRefusedError, _ConnectFailed) as err:
                    delay = backoff.next()
                    log.warning("broker %s: %s; retrying in %.1fs", self.settings.address, err, delay)
                    await asyncio.wait([stop_wait], timeout=delay)
                    continue
                backoff.reset()
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
        client.max_inflight_messages_set(MAX_INFLIGHT)
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
        self._devices.stop()
        client = self._client
        if client is not None and client.is_connected():
            self._send_acks()
            if self.settings.status_topic:
                info = client.publish(self.settings.status_topic, b"offline", qos=1, retain=True)
                await self._wait_published(info, 2.0)
            client.disconnect()
        self._set_down()
        await self._devices.close(5.0)

    async def _wait_published(self, info: paho.MQTTMessageInfo, timeout: float) -> None:
        # paho offers no awaitable for this; a short poll, bounded, at shutdown only.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
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
        # MQTT 5: the broker says how many QoS 1/2 PUBLISHes it takes unacknowledged (Receive
        # Maximum); sending more is a protocol error a strict broker disconnects for. paho does
        # not read it (mosquitto says 20 by default, and takes more all the same).
        receive_maximum = getattr(props, "ReceiveMaximum", None) if self.protocol == "5" else None
        in_flight = min(MAX_INFLIGHT, receive_maximum) if receive_maximum else MAX_INFLIGHT
        if not (isinstance(client, AsyncioClient) and client.limit_in_flight(in_flight)):
            in_flight = MAX_INFLIGHT
        if self.settings.shared_group and self.protocol != "5" and self._generation == 1:
            log.warning(
                "mqtt.shared_group is ignored on MQTT %s: shared subscriptions need MQTT 5, "
                "so every MQTT process of this group gets every sensor message",
                self.protocol,
            )
        filters = self._devices.filters()
        if filters:
            client.subscribe([(self._shared(f), self.settings.qos) for f in filters])
        if self.settings.status_topic:
            client.publish(self.settings.status_topic, b"online", qos=1, retain=True)
        log.info(
            "connected to %s (MQTT %s, session %s, %d filters, %d in flight%s)",
            self.settings.address,
            self.protocol,
            "resumed" if self.session_present else "new",
            len(filters),
            in_flight,
            f", shared as {self._shared('…')}" if self._shared("…") != "…" else "",
        )
        self.connected.set()
        self.on_state(True)
        self._devices.greet_all()

    def _greeting(self) -> MqttReceiveEvent | None:
        """A `mqtt.connect` event, while connected."""
        if not self.connected.is_set():
            return None
        return connect_event(self.protocol, self.session_present)

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
            self._set_down()
            if not self._stopping:
                self._devices.tell_all({"type": "mqtt.disconnect", "reason": reason, "final": False})

    def _set_down(self) -> None:
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
        # Queued, never handled here: paho holds its callback lock (not reentrant) around on_message.
        self._deliver(
            topic, bytes(msg.payload), msg.qos, bool(msg.retain), bool(msg.dup), msg.mid, props, False
        )

    def _on_publish(self, topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool, mid: int) -> None:
        # The client's fast path: a PUBLISH without MQTT 5 properties, no MQTTMessage made.
        try:
            text = topic.decode("utf-8")
        except UnicodeDecodeError:
            self._bad_topic(mid, qos)
            return
        self._deliver(text, payload, qos, retain, dup, mid, None, True)

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
        now: bool,
    ) -> None:
        """`now`: an instance that waits for it may handle it in this call (Inbox.offer)."""
        targets = self._exact.get(topic)
        if targets is None or self._wild:
            targets = self._devices.route(topic)
        if not targets:
            self.count("unrouted")
            self._ack(mid, qos, self._generation)
            return
        delivery = None
        if qos > 0:
            delivery = Delivery(mid, qos, self._generation, len(targets))
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
            if now:
                inst.queue.offer((event, delivery))
            else:
                inst.queue.put_nowait((event, delivery))

    # Devices

    def update_devices(self, devices: list[Device]) -> None:
        """After a reload: instances for new devices, removed ones end, changed topics followed."""
        self._configured = devices
        self._devices.update(devices)

    # Out to the broker

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

    async def _send(self, inst: DeviceInstance, event: dict[str, Any]) -> None:
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
                self._devices.add_filter(inst, checked["topic"])
                self._subscribe(checked["topic"], checked.get("qos", 1))
        else:
            self._devices.remove_filter(inst, checked["topic"])

    def _subscribe(self, topic_filter: str, qos: int | None = None) -> None:
        if self._client is not None and self.connected.is_set():
            self._client.subscribe(self._shared(topic_filter), self.settings.qos if qos is None else qos)

    def _unsubscribe(self, topic_filter: str) -> None:
        if self._client is not None and self.connected.is_set():
            self._client.unsubscribe(self._shared(topic_filter))

    def _shared(self, topic_filter: str) -> str:
        group = self.settings.shared_group
        if (
            group
            and self.protocol == "5"
            and not topic_filter.startswith("$")
            and (topic_filter not in self.settings.not_shared)
        ):
            return f"$share/{group}/{topic_filter}"
        return topic_filter


class _ConnectFailed(Exception):
    pass
