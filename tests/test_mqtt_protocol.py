"""The mqtt sub-spec in-process (communicator, validation, routing) and the server on mosquitto."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from typing import Any

import paho.mqtt.client as paho
import pytest
from django.conf import settings
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols._paho import READ_SLICE
from protocols.mqtt.client import BrokerAddress
from protocols.mqtt.consumer import MqttConsumer
from protocols.mqtt.events import validate_outgoing
from protocols.mqtt.routing import TopicRouter, route, topic_matches
from protocols.mqtt.server import Device, MqttServer, MqttSettings
from protocols.mqtt.testing import MqttCommunicator
from tests.conftest import Service, free_port, publish, until

if not settings.configured:
    settings.configure(CHANNEL_LAYERS={})


class Relay(MqttConsumer):
    """Switches a relay on when its leak sensor reports water."""

    async def mqtt_message(self, event):
        if event["payload"] == b"wet":
            await self.publish("relay/valve/set", "CLOSE", qos=1)
        elif event["payload"] == b"bad":
            await self.send({"type": "mqtt.publish", "topic": "a/+", "payload": b"x"})


async def test_communicator_drives_a_consumer() -> None:
    comm = MqttCommunicator(Relay.as_asgi(), device="leak", topics=["sensors/leak"])
    await comm.connect()
    await comm.message("sensors/leak", "wet")
    out = await comm.receive_output()
    assert out == {
        "type": "mqtt.publish",
        "topic": "relay/valve/set",
        "payload": b"CLOSE",
        "qos": 1,
        "retain": False,
    }
    await comm.disconnect()


async def test_invalid_event_raises_from_send() -> None:
    comm = MqttCommunicator(Relay.as_asgi())
    await comm.connect()
    await comm.message("test/test", "bad")
    with pytest.raises(ValueError, match="wildcards"):
        await comm.wait(1)


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"type": "mqtt.publish", "topic": "a", "payload": "text"}, TypeError),
        ({"type": "mqtt.publish", "topic": "a", "payload": b"", "qos": 3}, ValueError),
        ({"type": "mqtt.publish", "topic": 5, "payload": b""}, TypeError),
        ({"type": "mqtt.subscribe", "topic": "a/#/b"}, ValueError),
        ({"type": "mqtt.send", "topic": "a"}, ValueError),
        ({"type": "mqtt.unsubscribe", "topic": "a", "extra": 1}, ValueError),
    ],
)
def test_validation(event: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        validate_outgoing(event)


def test_topic_matching() -> None:
    assert topic_matches("a/+/c", "a/b/c") and topic_matches("a/#", "a") and topic_matches("#", "a/b")
    assert not topic_matches("a/+", "a/b/c") and not topic_matches("#", "$SYS/x")


async def test_topic_router_picks_by_scope_topic() -> None:
    seen = []

    def app(name):
        async def inner(scope, receive, send):
            seen.append(name)

        return inner

    router = TopicRouter([route("gateway/+/ack", app("ack")), route("#", app("sensor"))])
    await router({"type": "mqtt", "topic": "gateway/home/ack"}, None, None)
    await router({"type": "mqtt", "topic": "z2m/door"}, None, None)
    assert seen == ["ack", "sensor"]


class Recorder(MqttConsumer):
    events: asyncio.Queue = asyncio.Queue()

    async def mqtt_connect(self, event):
        await self.events.put((self.scope["device"], event["type"], None))

    async def mqtt_message(self, event):
        await self.events.put((self.scope["device"], event["topic"], event["payload"]))


async def _next(kind: str) -> tuple:
    while True:
        item = await asyncio.wait_for(Recorder.events.get(), 10)
        if item[1] == kind or kind == "*":
            return item


async def test_server_routes_per_device_discovers_lazily_and_survives_a_broker_restart(
    mosquitto: Service,
) -> None:
    Recorder.events = asyncio.Queue()
    settings_ = MqttSettings(
        BrokerAddress("127.0.0.1", mosquitto.port),
        "unit-test",
        protocol="5",
        discover=("found/+",),
        backoff_max=0.5,
    )
    server = MqttServer(settings_, Recorder.as_asgi(), [Device("d1", ("in/one",)), Device("d2", ("in/two",))])
    stop = asyncio.Event()
    task = asyncio.ensure_future(server.serve(stop))
    try:
        await asyncio.wait_for(server.connected.wait(), 5)
        await publish(mosquitto.port, "in/two", b"2")
        assert await _next("in/two") == ("d2", "in/two", b"2")
        await publish(mosquitto.port, "found/x", b"hi")
        assert await _next("found/x") == ("found/x", "found/x", b"hi")
        await asyncio.to_thread(mosquitto.restart)
        await _next("mqtt.connect")  # reconnected: every instance hears of it
        await asyncio.wait_for(server.connected.wait(), 10)
        await publish(mosquitto.port, "in/one", b"1")
        assert await _next("in/one") == ("d1", "in/one", b"1")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


class Burst(MqttConsumer):
    """Publishes 60 QoS 1 messages for each message it gets."""

    async def mqtt_message(self, event):
        for i in range(60):
            await self.publish(f"burst/{i}", str(i), qos=1)


@pytest.mark.parametrize(("protocol", "in_flight"), [("5", 5), ("3.1.1", 100)])
async def test_our_publishes_in_flight_keep_to_the_brokers_receive_maximum(
    tmp_path: Any, protocol: str, in_flight: int, caplog: pytest.LogCaptureFixture
) -> None:
    # MQTT 5: a broker's CONNACK says how many QoS 1 PUBLISHes it takes unacknowledged (here 5);
    # more is a protocol error a strict broker disconnects for. MQTT 3.1.1 has no such limit.
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 5\n")
    broker = Service(
        "mosquitto", [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)], port, tmp_path
    )
    broker.start()
    heard: list[bytes] = []
    loop = asyncio.get_running_loop()
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="burst-watcher")
    subscribed = asyncio.Event()
    watcher.on_message = lambda c, u, m: loop.call_soon_threadsafe(heard.append, m.payload)
    watcher.on_subscribe = lambda *a: loop.call_soon_threadsafe(subscribed.set)
    watcher.on_connect = lambda c, *a: c.subscribe("burst/#", 1)
    watcher.connect("127.0.0.1", port)
    watcher.loop_start()
    server = MqttServer(
        MqttSettings(BrokerAddress("127.0.0.1", port), f"burst-{protocol}", protocol=protocol),
        Burst.as_asgi(),
        [Device("trigger", ("go",))],
    )
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="gateway.mqtt")
    task = asyncio.ensure_future(server.serve(stop))
    try:
        await asyncio.wait_for(server.connected.wait(), 5)
        await asyncio.wait_for(subscribed.wait(), 5)
        assert f"filters, {in_flight} in flight)" in caplog.text
        assert server._client is not None and server._client._max_inflight_messages == in_flight
        await publish(port, "go", b"1")
        await until(lambda: len(heard) == 60, what="all 60 published")
        assert sorted(heard) == sorted(str(i).encode() for i in range(60))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        watcher.loop_stop()
        watcher.disconnect()
        broker.stop()


async def test_unknown_topics_under_a_wildcard_route_are_capped_and_expire(mosquitto: Service) -> None:
    scopes: list[str] = []
    ended: list[str] = []
    outcomes: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope["device"])
        while True:
            event = await receive()
            if event["type"] == "mqtt.disconnect" and event.get("final"):
                ended.append(scope["device"])
                return

    settings = MqttSettings(
        address=BrokerAddress("127.0.0.1", mosquitto.port),
        client_id="lazy-test",
        protocol="3.1.1",
        discover=("things/#",),
        max_lazy_devices=100,
        lazy_idle=3.0,
    )
    server = MqttServer(settings, app, [], count=outcomes.append)
    stop = asyncio.Event()
    serving = asyncio.ensure_future(server.serve(stop))
    await asyncio.wait_for(server.connected.wait(), 5)

    def two_thousand_strangers() -> None:
        sender = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="many-things")
        sender.connect("127.0.0.1", mosquitto.port)
        sender.loop_start()
        for i in range(2000):  # devices nobody configured, under the wildcard route
            sender.publish(f"things/{i}", b"1", qos=1).wait_for_publish(5)
        sender.loop_stop()
        sender.disconnect()

    await asyncio.to_thread(two_thousand_strangers)
    await until(lambda: outcomes.count("lazy_cap") >= 1800, what="the cap")
    assert len(set(scopes)) == 100  # no more scopes than the cap, however many topics
    # Silent for lazy_idle: they end, and their places are free again.
    await until(lambda: len(ended) == 100, what="the idle scopes ended")
    await publish(mosquitto.port, "things/new", b"1")
    await until(lambda: "things/new" in scopes, what="a new scope")
    stop.set()
    await asyncio.wait_for(serving, 10)


class Collector(MqttConsumer):
    """Keeps every message it handles: (device, payload, qos, properties)."""

    got: list[tuple[str, bytes, int, dict[str, Any]]] = []

    async def mqtt_message(self, event):
        self.got.append((self.scope["device"], event["payload"], event["qos"], event["properties"]))


@pytest.mark.parametrize("eager", [False, True], ids=["queued", "eager"])
async def test_a_burst_with_and_without_properties_arrives_in_order_and_is_acknowledged(
    mosquitto: Service, eager: bool
) -> None:
    """The client's fast paths (batched reads, PUBLISH without Properties, coalesced PUBACKs) and
    paho's; handled by the instances' tasks, or in the reader's call (`eager`)."""
    consumer = type("EagerCollector", (Collector,), {"eager": True}) if eager else Collector
    Collector.got = []
    settings_ = MqttSettings(BrokerAddress("127.0.0.1", mosquitto.port), f"burst-test-{eager}", protocol="5")
    devices = [Device("a", ("burst/a",)), Device("b", ("burst/b",))]

    def publish_burst() -> None:
        sender = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="burst", protocol=paho.MQTTv5)
        sender.max_inflight_messages_set(1000)
        sender.connect("127.0.0.1", mosquitto.port)
        sender.loop_start()
        infos = []
        for i in range(3000):
            props = None
            if i % 10 == 0:  # some with MQTT 5 properties: paho decodes those
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = ("n", str(i))
                props.ContentType = "text/plain"
            qos = (1, 1, 0)[i % 3]  # (QoS 2 from a publisher that fast loses some in mosquitto)
            infos.append(sender.publish(f"burst/{'ab'[i % 2]}", str(i).encode(), qos=qos, properties=props))
        for info in infos:
            info.wait_for_publish(10)
        sender.loop_stop()
        sender.disconnect()

    async def serve_once(until_count: int, wait: float) -> None:
        server = MqttServer(settings_, consumer.as_asgi(), devices)
        stop = asyncio.Event()
        task = asyncio.ensure_future(server.serve(stop))
        try:
            await asyncio.wait_for(server.connected.wait(), 5)
            if until_count:
                await asyncio.to_thread(publish_burst)
                await until(lambda: len(Collector.got) >= until_count, timeout=30, what="the burst")
            await asyncio.sleep(wait)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    await serve_once(3000, 0.2)
    assert len(Collector.got) == 3000
    for device in "ab":
        numbers = [int(p) for d, p, qos, _ in Collector.got if d == device and qos == 1]
        assert (
            numbers == sorted(numbers) and len(numbers) == 1000
        )  # in order (the broker may send QoS 0 first)
    by_number = {int(p): (qos, props) for _, p, qos, props in Collector.got}
    for i, (qos, props) in by_number.items():
        assert qos == (1, 1, 0)[i % 3]
        if i % 10 == 0:
            assert props["ContentType"] == "text/plain" and props["UserProperty"] == [("n", str(i))]
        else:
            assert props == {}
    # Every QoS 1/2 message was acknowledged: the resumed session has nothing to deliver again.
    await serve_once(0, 1.0)
    assert len(Collector.got) == 3000


class Fragile(MqttConsumer):
    """Fails on `boom`, like a bug would; keeps what it handled in a list shared by its restarts."""

    got: list[bytes] = []

    async def mqtt_message(self, event):
        if event["payload"] == b"boom":
            raise RuntimeError("boom")
        self.got.append(event["payload"])


@pytest.mark.parametrize("eager", [False, True], ids=["queued", "eager"])
async def test_a_failing_instance_is_started_again_keeping_order_and_acknowledgements(
    mosquitto: Service, eager: bool
) -> None:
    consumer = type("EagerFragile", (Fragile,), {"eager": True}) if eager else Fragile
    Fragile.got = []
    faults: list[tuple[str, str | None]] = []
    outcomes: list[str] = []
    settings_ = MqttSettings(
        BrokerAddress("127.0.0.1", mosquitto.port), f"fragile-test-{eager}", protocol="5"
    )
    sent = [b"boom" if i % 3 == 2 or 20 <= i < 24 else str(i).encode() for i in range(60)]

    def publish_all() -> None:
        sender = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="fragile-sender")
        sender.connect("127.0.0.1", mosquitto.port)
        sender.loop_start()
        for payload in sent:
            sender.publish("fragile/x", payload, qos=1).wait_for_publish(5)
        sender.loop_stop()
        sender.disconnect()

    async def serve_once(publish_first: bool, wait_for: int) -> None:
        server = MqttServer(
            settings_,
            consumer.as_asgi(),
            [Device("x", ("fragile/x",))],
            count=outcomes.append,
            on_fault=lambda device, detail: faults.append((device, detail)),
        )
        stop = asyncio.Event()
        task = asyncio.ensure_future(server.serve(stop))
        try:
            await asyncio.wait_for(server.connected.wait(), 5)
            if publish_first:
                await asyncio.to_thread(publish_all)
            await until(lambda: len(Fragile.got) >= wait_for, what="the good messages")
            await asyncio.sleep(0.5)  # anything more (redelivered, doubled) would arrive now
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    good = [p for p in sent if p != b"boom"]
    await serve_once(True, len(good))
    # Every good message, once and in order, though the instance failed 22 times (4 in a row once).
    assert Fragile.got == good
    assert outcomes.count("app_error") == sent.count(b"boom") == 22
    assert ("x", "RuntimeError: boom") in faults and faults[-1] == ("x", None)
    assert faults.count(("x", "RuntimeError: boom")) == 1
    # Each was acknowledged once handled (or failed on): the resumed session brings nothing back.
    await serve_once(False, len(good))
    assert Fragile.got == good


def _publish_with_properties(port: int, topic: str, payload: bytes) -> None:
    sender = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="props-sender", protocol=paho.MQTTv5)
    sender.connect("127.0.0.1", port)
    sender.loop_start()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("k", "v")
    sender.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)
    sender.loop_stop()
    sender.disconnect()


class Eager(MqttConsumer):
    """Handles readings in the reader's call (`eager`); `slow` waits for `gate` halfway through."""

    eager = True
    log: list[tuple[str, bytes, bool]] = []
    gate: asyncio.Event

    async def mqtt_message(self, event):
        payload = event["payload"]
        self.log.append(("start", payload, asyncio.current_task() is None))
        try:
            if payload == b"slow":
                await self.gate.wait()
        except asyncio.CancelledError:
            self.log.append(("cancelled", payload, asyncio.current_task() is None))
            raise
        self.log.append(("end", payload, asyncio.current_task() is None))


async def test_an_eager_consumer_handles_a_reading_in_the_readers_call_and_keeps_order(
    mosquitto: Service,
) -> None:
    Eager.log, Eager.gate = [], asyncio.Event()
    settings_ = MqttSettings(BrokerAddress("127.0.0.1", mosquitto.port), "eager-test", protocol="5")

    async def serving(body: Any) -> None:
        server = MqttServer(settings_, Eager.as_asgi(), [Device("x", ("eager/x",))])
        stop = asyncio.Event()
        task = asyncio.ensure_future(server.serve(stop))
        try:
            await asyncio.wait_for(server.connected.wait(), 5)
            await body(server)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    async def first(server: MqttServer) -> None:
        # A lone reading: handled outside any task, start to end, in the reader's call.
        await publish(mosquitto.port, "eager/x", b"1", qos=1)
        await until(lambda: len(Eager.log) == 2, what="the first reading")
        assert Eager.log == [("start", b"1", True), ("end", b"1", True)]
        # One that waits goes on in a task from there; the next ones queue behind it, in order.
        await publish(mosquitto.port, "eager/x", b"slow", qos=1)
        await until(lambda: len(Eager.log) == 3, what="the slow reading's start")
        for payload in (b"2", b"3"):
            await publish(mosquitto.port, "eager/x", payload, qos=1)
        inst = server._devices.instances[0]
        await until(lambda: inst.queue.qsize() == 2, what="two readings queued behind it")
        assert Eager.log[2:] == [("start", b"slow", True)]
        Eager.gate.set()
        await until(lambda: len(Eager.log) == 8, what="the queued readings")
        assert Eager.log[3:] == [
            ("end", b"slow", False),  # in its task
            ("start", b"2", False),  # queued: taken by the instance's task
            ("end", b"2", False),
            ("start", b"3", False),
            ("end", b"3", False),
        ]
        # Waiting again: the next lone reading is handled in the reader's call again.
        await publish(mosquitto.port, "eager/x", b"4", qos=1)
        await until(lambda: len(Eager.log) == 10, what="the last reading")
        assert Eager.log[8:] == [("start", b"4", True), ("end", b"4", True)]
        # One with MQTT 5 properties comes through paho's own reader, which holds a lock of its
        # own (not reentrant) around on_message: it is queued for the instance's task instead.
        await asyncio.to_thread(_publish_with_properties, mosquitto.port, "eager/x", b"p")
        await until(lambda: len(Eager.log) == 12, what="the reading with properties")
        assert Eager.log[10:] == [("start", b"p", False), ("end", b"p", False)]

    await serving(first)
    # Each was acknowledged once handled: the resumed session brings nothing back.
    handled = list(Eager.log)

    async def again(server: MqttServer) -> None:
        await publish(mosquitto.port, "eager/x", b"5", qos=1)
        await until(lambda: len(Eager.log) == len(handled) + 2, what="a new reading")

    await serving(again)
    assert Eager.log == [*handled, ("start", b"5", True), ("end", b"5", True)]


async def test_an_eager_readings_wait_is_cancelled_with_its_instance(mosquitto: Service) -> None:
    Eager.log, Eager.gate = [], asyncio.Event()
    settings_ = MqttSettings(BrokerAddress("127.0.0.1", mosquitto.port), "eager-stop", protocol="5")
    server = MqttServer(settings_, Eager.as_asgi(), [Device("x", ("eager/x",))])
    stop = asyncio.Event()
    task = asyncio.ensure_future(server.serve(stop))
    await asyncio.wait_for(server.connected.wait(), 5)
    await publish(mosquitto.port, "eager/x", b"slow", qos=1)
    await until(lambda: len(Eager.log) == 1, what="the slow reading's start")
    inst = server._devices.instances[0]
    assert inst.task is not None
    inst.task.cancel()  # as the server's close does to an instance that does not end in time
    await asyncio.wait([inst.task], timeout=5)
    assert inst.task.cancelled()
    assert Eager.log == [("start", b"slow", True), ("cancelled", b"slow", False)]  # the wait too
    stop.set()
    await asyncio.wait_for(task, 10)
    lingering = [t for t in asyncio.all_tasks() if "_go_on" in repr(t.get_coro())]
    assert lingering == []


class Busy(MqttConsumer):
    """An eager consumer whose handler works 0.2 ms per reading; marks where the loop's other
    callbacks got a turn during a burst."""

    eager = True
    got: list[bytes] = []
    turns: list[int] = []

    async def mqtt_message(self, event):
        if not self.got:
            asyncio.get_running_loop().call_soon(self._turn)
        self.got.append(event["payload"])
        end = time.perf_counter() + 0.0002
        while time.perf_counter() < end:  # CPU work, as a reading's rules and store take
            pass

    def _turn(self) -> None:
        self.turns.append(len(self.got))
        if len(self.got) < 2000:
            asyncio.get_running_loop().call_soon(self._turn)


async def test_a_burst_handled_in_the_readers_call_gives_the_loop_a_turn_every_few_ms(
    mosquitto: Service,
) -> None:
    # 2,000 readings arrive at once and each takes 0.2 ms in the reader's call: the reader stops
    # after READ_SLICE (20 ms, about 100 readings) so that timers, other sockets and replies are
    # not held up for the whole burst (0.4 s), nor for longer and longer as it goes on.
    Busy.got, Busy.turns = [], []
    settings_ = MqttSettings(BrokerAddress("127.0.0.1", mosquitto.port), "busy-test", protocol="5")
    server = MqttServer(settings_, Busy.as_asgi(), [Device("x", ("busy/x",))])
    stop = asyncio.Event()
    task = asyncio.ensure_future(server.serve(stop))

    def publish_burst() -> None:
        sender = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="busy-sender")
        sender.connect("127.0.0.1", mosquitto.port)
        sender.loop_start()
        infos = [sender.publish("busy/x", str(i).encode(), qos=0) for i in range(2000)]
        for info in infos:
            info.wait_for_publish(10)
        sender.loop_stop()
        sender.disconnect()

    try:
        await asyncio.wait_for(server.connected.wait(), 5)
        await asyncio.to_thread(publish_burst)
        await until(lambda: len(Busy.got) == 2000, timeout=30, what="the burst")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert Busy.got == [str(i).encode() for i in range(2000)]
    # Between two turns of the loop's other callbacks, at most two reads of READ_SLICE (and one
    # reading more each): the socket's and one more, not a growing number of them.
    gaps = [b - a for a, b in zip(Busy.turns, Busy.turns[1:], strict=False)]
    assert gaps and max(gaps) <= 2 * (READ_SLICE / 0.0002 + 1), Busy.turns
