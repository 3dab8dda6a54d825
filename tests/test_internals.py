"""The libraries' private names the gateway relies on, each fenced in one module, and the fallbacks.

Each fence module (FENCES) names the version it was checked on and the private names it uses.
Here: the installed version is the one checked and pyproject pins it, every name is there and
does what the fence expects (an upgrade fails here by name, before a test of behaviour fails
for a reason far away), our own private names shadow none of the library's, and each fallback,
forced, carries a real round trip: through mosquitto, the layers, and a whole gateway under
daphne with every fence on its library's public path.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import importlib
import importlib.util
import inspect
import itertools
import logging
import os
import socket
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any

import daphne.server  # first, as in the gateway: Twisted's reactor is its asyncio one
import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement

from gateway.layers import _channels, _channels_redis
from gateway.layers.memory import MemoryLayer
from gateway.layers.peers import PeerMirror
from gateway.layers.redis import RedisLayer
from gateway.ops import metrics
from gateway.web import _django
from protocols import _autobahn, _paho, _twisted
from protocols.mqtt.client import AsyncioClient, BrokerAddress
from tests.conftest import (
    ROOT,
    GatewayFactory,
    GatewayProcess,
    Service,
    alert_event,
    http_get,
    publish,
    recv_json,
    recv_until,
    until,
    ws_connect,
)

FENCES = [_paho, _twisted, _autobahn, _channels, _channels_redis, _django]


def source(obj: object) -> str:
    return inspect.getsource(obj)  # type: ignore[arg-type]


def fence_path(fence: ModuleType) -> str:
    return str(Path(fence.__file__ or "").relative_to(ROOT))


# The versions


@pytest.mark.parametrize("fence", FENCES, ids=lambda f: f.__name__)
def test_each_fence_was_checked_on_the_installed_version_which_pyproject_pins(fence: ModuleType) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    pins = {
        Requirement(d).name.lower(): Requirement(d)
        for d in tomllib.loads(pyproject)["project"]["dependencies"]
    }
    for package, checked in fence.CHECKED.items():
        installed = version(package)
        assert installed == checked, f"{package} {installed}: check {fence_path(fence)} against it first"
        assert pins[package].specifier.contains(checked) and not pins[package].specifier.contains("999")
        assert f"# {fence_path(fence)}: checked on {checked}." in pyproject


def test_daphne_too() -> None:
    # daphne's undocumented hooks (no private name) are in the WebSocket server alone.
    from protocols.websocket import server

    installed = version("daphne")
    assert f"(daphne {installed})" in (server.__doc__ or "")
    assert (
        f"protocols/websocket/server.py (undocumented hooks, no private name): checked on {installed}."
        in (ROOT / "pyproject.toml").read_text()
    )


# The names


@pytest.mark.parametrize("fence", FENCES, ids=lambda f: f.__name__)
def test_each_fence_finds_every_name_it_uses(fence: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert fence.check() is True
    assert caplog.text == ""
    assert fence.FAST is True or (fence.FAST is None and fence.enabled() is True)


def _without(owner: str, name: str) -> Any:
    def remove(monkeypatch: pytest.MonkeyPatch) -> None:
        module, _, cls = owner.rpartition(".")
        monkeypatch.delattr(getattr(importlib.import_module(module), cls), name)

    return remove


def _without_prepared_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    from autobahn.websocket.protocol import PreparedMessage

    monkeypatch.setattr(PreparedMessage, "__init__", lambda self, *args: None)  # sets no payloadHybi


def _without_the_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_django, "log_response", lambda *args, **kwargs: None)  # reads no mark


MISSING = [
    (_paho, _without("paho.mqtt.client.Client", "_packet_read"), "_packet_read"),
    (
        _twisted,
        _without("twisted.internet.abstract.FileDescriptor", "dataBuffer"),
        "FileDescriptor.dataBuffer",
    ),
    (_autobahn, _without_prepared_payload, "PreparedMessage.payloadHybi"),
    (_channels, _without("channels.layers.InMemoryChannelLayer", "_clean_expired"), "_clean_expired"),
    (_channels_redis, _without("channels_redis.core.RedisChannelLayer", "_group_key"), "_group_key"),
    (_django, _without_the_mark, "_has_been_logged"),
]


@pytest.mark.parametrize(("fence", "remove", "name"), MISSING, ids=[name for _, _, name in MISSING])
def test_a_missing_name_turns_the_fence_off_with_one_line(
    fence: ModuleType,
    remove: Any,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    remove(monkeypatch)
    with caplog.at_level(logging.WARNING):
        assert fence.check() is False
    [record] = caplog.records
    assert record.name.startswith("gateway.") and name in record.getMessage()
    assert next(iter(fence.CHECKED.values())) in record.getMessage()


def test_paho_internals_are_shaped_as_protocols_paho_expects() -> None:
    probe = paho.Client(paho.CallbackAPIVersion.VERSION2)
    assert {"command", "packet"} <= probe._in_packet.keys()
    queue = source(paho.Client._packet_queue)
    assert all(f'"{key}"' in queue for key in ("command", "qos", "pos", "to_process", "packet"))
    assert "self._out_packet.append(mpkt)" in queue
    # The reader asks _sock_recv (served from our buffer) for 1, 1, then the rest; handles the
    # packet whole (a PUBLISH in _handle_publish), then starts afresh: "command" 0 between packets.
    read = source(paho.Client._packet_read)
    assert "self._sock_recv(1)" in read and "self._sock_recv(self._in_packet['to_process'])" in read
    assert read.index("rc = self._packet_handle()") < read.index('"command": 0,')
    assert "self._last_bytes_received = time_func()" in read
    assert "return self._handle_publish()" in source(paho.Client._packet_handle)
    assert "sock = self._create_socket_connection()" in source(paho.Client._create_socket)
    assert "self._sock_send(" in source(paho.Client._packet_write)
    assert "self._send_puback(mid)" in source(paho.Client.ack)


def test_twisted_http_channel_hooks_are_where_twisted_io_expects_them() -> None:
    from twisted.protocols.basic import LineReceiver
    from twisted.web.http import HTTPChannel, HTTPFactory

    hooks = ("lineReceived", "allHeadersReceived", "allContentReceived", "rawDataReceived", "requestDone")
    for name in hooks:
        assert callable(getattr(HTTPChannel, name)), name
    assert "self.lineLengthExceeded(" in source(LineReceiver.dataReceived)
    assert HTTPChannel.MAX_LENGTH and HTTPChannel.totalHeadersSize
    line_received = source(HTTPChannel.lineReceived)
    # The head ends: allHeadersReceived, then allContentReceived at once when there is no body.
    assert line_received.index("self.allHeadersReceived()") < line_received.index("self.allContentReceived()")
    assert "req.gotLength(self.length)" in source(HTTPChannel.allHeadersReceived)
    assert "_send100Continue" in source(HTTPChannel.allHeadersReceived)
    assert "self.persistent" in source(HTTPChannel.requestDone)
    # Factory.buildProtocol calls self.protocol(): a channel class set on the factory is used.
    assert "p = self.protocol()" in source(HTTPFactory.__mro__[1].buildProtocol)


def test_twisted_transport_internals_that_protocols_twisted_reads() -> None:
    from twisted.internet.abstract import FileDescriptor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor
    from twisted.internet.tcp import Connection

    write = source(FileDescriptor.write)
    assert "self._tempDataLen" in write and "self._maybePauseProducer()" in write
    assert "self.bufferSize" in source(FileDescriptor._isSendBufferFull)
    assert "self.producer.resumeProducing()" in source(FileDescriptor.doWrite)
    assert "self.dataBuffer" in source(FileDescriptor.doWrite) and "self.offset" in source(
        FileDescriptor.doWrite
    )
    assert "self.socket: socket.socket = skt" in source(Connection.__init__)
    assert "self._asyncioEventloop: AbstractEventLoop = _eventloop" in source(AsyncioSelectorReactor.__init__)
    for name in ("loseWriteConnection", "abortConnection", "registerProducer", "unregisterProducer"):
        assert callable(getattr(Connection, name)), name


def test_daphne_factories_and_protocol_names() -> None:
    from daphne.http_protocol import HTTPFactory
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    run = source(Server.run)
    assert "self.http_factory = HTTPFactory(self)" in run and "self.ws_factory = WebSocketFactory(" in run
    assert "protocol.requestFactory = WebRequest" in source(HTTPFactory.buildProtocol)
    assert "self.sendClose(code=code)" in source(WebSocketProtocol.serverClose)
    assert callable(WebSocketProtocol.serverSend)
    # daphne keeps an asyncio reactor it finds (protocols._twisted's fallback installs one first).
    assert "isinstance(current_reactor, asyncioreactor.AsyncioSelectorReactor)" in source(daphne.server)


def test_autobahn_close_and_framing_names() -> None:
    from autobahn.twisted.websocket import WebSocketServerFactory
    from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol

    assert "invalid close code" in source(WebSocketProtocol.sendClose)  # why serverClose bypasses it
    assert "code" in inspect.signature(WebSocketProtocol.sendCloseFrame).parameters
    assert "if self.failByDrop:" in source(WebSocketProtocol._fail_connection)
    assert isinstance(PreparedMessage(b"x", False, False, False).payloadHybi, bytes)
    # What sendPreparedMessage does when nothing is compressed: the bytes protocols._autobahn writes.
    assert "self.sendData(preparedMsg.payloadHybi)" in source(WebSocketProtocol.sendPreparedMessage)
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(failByDrop=False, closeHandshakeTimeout=5)
    assert (factory.failByDrop, factory.closeHandshakeTimeout) == (False, 5)
    for name in ("_perMessageCompress", "send_queue", "sendPreparedMessage", "dropConnection"):
        assert name in source(WebSocketProtocol), name


NVX_MODULES = _autobahn.NVX_MODULES


@functools.cache
def nvx_pair() -> tuple[dict[str, Any], dict[str, Any]]:
    """(ours, autobahn's): the names of each module of NVX_MODULES, autobahn's read from its files."""
    import autobahn.nvx

    saved = {name: sys.modules.pop(name, None) for name in NVX_MODULES}
    try:
        assert _autobahn.compiled_nvx() is True
        ours = {name: vars(sys.modules[name]) for name in NVX_MODULES}
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    theirs = {}
    for name in NVX_MODULES:
        path = Path(autobahn.nvx.__file__).parent / f"{name.rsplit('.', 1)[1]}.py"
        spec = importlib.util.spec_from_file_location(f"theirs{name.rsplit('.', 1)[1]}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        theirs[name] = vars(module)
    return ours, theirs


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


UTF8ISH = st.binary(max_size=300) | st.text(max_size=100).map(str.encode)


@settings(max_examples=300)
@given(data=UTF8ISH, cuts=st.lists(st.integers(0, 400), max_size=4), then=UTF8ISH)
def test_the_native_utf8_validator_answers_as_autobahns_own(
    data: bytes, cuts: list[int], then: bytes
) -> None:
    ours_module, theirs_module = (side["autobahn.nvx._utf8validator"] for side in nvx_pair())
    ours, theirs = ours_module["Utf8Validator"](), theirs_module["Utf8Validator"]()
    for piece in pieces(data, cuts):
        assert ours.validate(piece) == theirs.validate(piece)
    ours.reset()
    theirs.reset()
    assert ours.validate(then) == theirs.validate(then)


@settings(max_examples=300)
@given(
    mask=st.binary(min_size=4, max_size=4),
    data=st.binary(max_size=600),
    cuts=st.lists(st.integers(0, 700), max_size=4),
    hinted=st.booleans(),
)
def test_the_native_masker_masks_as_autobahns_own(
    mask: bytes, data: bytes, cuts: list[int], hinted: bool
) -> None:
    ours_module, theirs_module = (side["autobahn.nvx._xormasker"] for side in nvx_pair())
    length = len(data) if hinted else None
    ours, theirs = (
        ours_module["create_xor_masker"](mask, length),
        theirs_module["create_xor_masker"](mask, length),
    )
    for piece in pieces(data, cuts):
        assert ours.process(piece) == theirs.process(piece)
        assert ours.pointer() == theirs.pointer()
    ours.reset()
    theirs.reset()
    assert ours.pointer() == theirs.pointer() == 0
    assert ours.process(data) == theirs.process(data) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))


NVX_FALLBACKS = {
    # autobahn's own modules, imported as they are: logged where autobahn is not the one checked...
    "another version": "autobahn 27.1.1 (checked on 26.11.1): its NVX modules are imported with their build",
    "a function gone": "NVX modules lack nvx_gone: they are imported with their build step",
    # ... silently where NVX is not used at all: autobahn takes its pure-Python validator and masker.
    "NVX not built": "",
    "AUTOBAHN_USE_NVX=0": "",
}


@pytest.mark.parametrize("case", NVX_FALLBACKS)
def test_autobahns_own_nvx_modules_are_left_to_it_where_compiled_nvx_does_not_hold(
    case: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import autobahn._version

    for name in NVX_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    if case == "another version":
        monkeypatch.setattr(autobahn._version, "__version__", "27.1.1")
    elif case == "a function gone":
        monkeypatch.setitem(_autobahn.NVX, "_nvx_xormasker", (*_autobahn.NVX["_nvx_xormasker"], "nvx_gone"))
    elif case == "NVX not built":
        monkeypatch.setitem(sys.modules, "_nvx_utf8validator", None)  # import -> ImportError
    else:
        monkeypatch.setenv("AUTOBAHN_USE_NVX", "0")
    with caplog.at_level(logging.WARNING):
        assert _autobahn.compiled_nvx() is False
    assert not any(name in sys.modules for name in NVX_MODULES)
    assert NVX_FALLBACKS[case] in caplog.text and bool(caplog.text) == bool(NVX_FALLBACKS[case])


def test_what_an_open_websocket_drops_is_what_daphne_and_autobahn_set_for_the_handshake() -> None:
    import daphne.server
    from autobahn.twisted.websocket import WebSocketServerFactory
    from autobahn.websocket.protocol import WebSocketProtocol as AutobahnProtocol
    from autobahn.websocket.protocol import WebSocketServerProtocol
    from daphne.ws_protocol import WebSocketProtocol

    from protocols.websocket.server import HANDSHAKE_STATE

    # Each name is the library's (a renamed one would stay, silently, as a KiB per socket).
    assigned = _assigned_to_self(WebSocketServerProtocol) | _assigned_to_self(WebSocketProtocol)
    assigned |= _assigned_to_self(AutobahnProtocol)
    assert set(HANDSHAKE_STATE) <= assigned, set(HANDSHAKE_STATE) - assigned
    # Once open, daphne reads no more of the request than its path (what `Opened` keeps).
    for method in (WebSocketProtocol.onOpen, WebSocketProtocol.onClose, WebSocketProtocol.serverReject):
        assert "self.request.path" in source(method)
    opened = [source(m) for m in (WebSocketProtocol.onMessage, WebSocketProtocol.handle_reply)]
    assert not any(name in text for text in opened for name in (*HANDSHAKE_STATE, "self.request"))
    # autobahn copies a factory's option into a connection only when the protocol lacks it.
    assert "if not hasattr(self, configAttr):" in source(AutobahnProtocol._connectionMade)
    factory = WebSocketServerFactory()  # where protocols.websocket.server.FactoryOption reads them
    assert all(hasattr(factory, name) for name in WebSocketServerProtocol.CONFIG_ATTRS)
    # protocols.websocket.server.WebServer's create_application is daphne's, but for the Inbox.
    create = source(daphne.server.Server.create_application)
    assert "input_queue = asyncio.Queue()" in create and "receive=input_queue.get," in create
    assert "send=partial(self.handle_reply, protocol)," in create


def test_channels_in_memory_layer_is_shaped_as_gateway_layers_channels_expects() -> None:
    from channels.layers import InMemoryChannelLayer

    assert "queue.put_nowait((time.time() + self.expiry, deepcopy(message)))" in source(
        InMemoryChannelLayer.send
    )
    assert "_, message = await queue.get()" in source(InMemoryChannelLayer.receive)
    assert "self.groups[group][channel] = time.time()" in source(InMemoryChannelLayer.group_add)


def test_channels_redis_internals_are_shaped_as_gateway_layers_channels_redis_expects() -> None:
    from channels_redis import core

    assert core.logger.name == _channels_redis.LOGGER
    assert "logger.info(" in source(core.RedisChannelLayer.group_send)
    assert "await connection.zadd(group_key, {channel: time.time()})" in source(
        core.RedisChannelLayer.group_add
    )
    # Every connection's pool comes from create_pool: gateway.layers.redis keeps what it made.
    assert "pool = self.channel_layer.create_pool(index)" in source(core.RedisLoopLayer.get_connection)


def test_django_reads_the_mark_of_a_response_logged_already() -> None:
    assert 'if getattr(response, "_has_been_logged", False):' in source(_django.log_response)


def test_amqtt_hook_of_the_embedded_broker() -> None:
    # Not a private name, but undocumented: protocols.mqtt.broker sets TCP_NODELAY there.
    from amqtt.broker import Broker

    assert list(inspect.signature(Broker.stream_connected).parameters) == [
        "self",
        "reader",
        "writer",
        "listener_name",
    ]


# Our own private names, on subclasses of the libraries' classes: an upgrade that gives the
# library a name of ours would have one of them overwrite the other, in silence.


def _assigned_to_self(cls: type) -> set[str]:
    try:
        tree = ast.parse(textwrap.dedent(source(cls)))
    except (OSError, TypeError):
        return set()
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
        if isinstance(node.ctx, ast.Store)
    }


def _own_private(cls: type, base: type) -> set[str]:
    ours = [c for c in cls.__mro__ if c not in base.__mro__ and c is not object]
    names = {n for c in ours for n in (*vars(c), *_assigned_to_self(c))}
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _library_names(base: type) -> set[str]:
    return set(dir(base)) | {n for c in base.__mro__ if c is not object for n in _assigned_to_self(c)}


def _subclasses() -> list[tuple[type, type, tuple[str, ...]]]:
    from channels.layers import InMemoryChannelLayer
    from channels_redis.core import RedisChannelLayer
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.web.http import HTTPChannel

    from protocols.websocket.http_guard import Guard
    from protocols.websocket.server import bounded_protocol
    from protocols.websocket.twisted_io import guarded_channel

    return [
        (AsyncioClient, paho.Client, _paho.INTERNALS),  # on purpose: overridden, or written
        (MemoryLayer, InMemoryChannelLayer, ()),
        (RedisLayer, RedisChannelLayer, ()),
        (guarded_channel(Guard()), HTTPChannel, ()),
        (bounded_protocol(WebSocketProtocol, 1024), WebSocketProtocol, ()),
    ]


def test_our_private_names_shadow_none_of_the_librarys() -> None:
    for cls, base, fenced in _subclasses():
        clash = _own_private(cls, base) & _library_names(base) - set(fenced)
        assert not clash, f"{cls.__name__} and {base.__name__} both have {clash}"


# The fallbacks, forced, on real parts


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "public"])
@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5], ids=["3.1.1", "5"])
async def test_the_mqtt_client_round_trip_on_either_path(
    mosquitto: Service, monkeypatch: pytest.MonkeyPatch, fast: bool, protocol: int
) -> None:
    monkeypatch.setattr(_paho, "FAST", fast)
    loop = asyncio.get_running_loop()
    client = AsyncioClient(loop, client_id=f"fence-{fast}-{protocol}", protocol=protocol, manual_ack=True)
    connected, subscribed, done = loop.create_future(), loop.create_future(), loop.create_future()
    got: list[tuple[str, bytes, int]] = []
    paths: set[str] = set()
    expected = 30  # over mosquitto's 20 in flight: the rest only comes once the first are acknowledged

    def take(path: str, topic: str, payload: bytes, qos: int, mid: int) -> None:
        paths.add(path)
        got.append((topic, payload, qos))
        if qos:
            loop.call_soon(client.ack_many, [mid])  # at the end of the turn, as the MQTT server does
        if len(got) == expected and not done.done():
            done.set_result(None)

    client.on_connect = lambda c, u, flags, rc, props: connected.set_result(rc)
    client.on_subscribe = lambda c, u, mid, codes, props: subscribed.set_result(codes)
    client.on_message = lambda c, u, m: take("message", m.topic, m.payload, m.qos, m.mid)
    client.on_publish_received = lambda topic, payload, qos, retain, dup, mid: take(
        "fast", topic.decode(), payload, qos, mid
    )
    await client.connect_async_io(BrokerAddress("127.0.0.1", mosquitto.port), 30, 5.0)
    try:
        assert not (await asyncio.wait_for(connected, 5)).is_failure
        sock = client.socket()
        assert sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        client.subscribe("fence/#", 1)
        assert not (await asyncio.wait_for(subscribed, 5))[0].is_failure  # before anything is published
        messages = [(f"fence/{i}", f"m{i}".encode(), 1 if i % 3 else 0) for i in range(expected)]
        await asyncio.to_thread(_publish_all, mosquitto.port, messages)
        await asyncio.wait_for(done, 10)
        assert sorted(got) == sorted(messages)
        assert paths == ({"fast"} if fast else {"message"})
    finally:
        client.disconnect()


def _publish_all(port: int, messages: list[tuple[str, bytes, int]]) -> None:
    import paho.mqtt.publish as mqtt_publish

    mqtt_publish.multiple([{"topic": t, "payload": p, "qos": q} for t, p, q in messages], port=port)


async def test_the_memory_layer_on_channels_public_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_channels, "FAST", False)
    layer = MemoryLayer(capacity=2)
    channel = await layer.new_channel()
    await layer.group_add("fenced", channel)
    before = metrics.layer_overflows._value.get()
    for i in range(3):
        await layer.group_send("fenced", {"type": "alert.raised", "n": i})
    assert metrics.layer_overflows._value.get() - before == 1  # the full channel, still counted
    assert [(await layer.receive(channel))["n"] for _ in range(2)] == [0, 1]
    assert await layer.group_members("fenced") is None
    await _peers_hear_each_other(layer)


async def _peers_hear_each_other(layer: Any) -> None:
    a, b = PeerMirror(layer), PeerMirror(layer)
    heard_a: list[Any] = []
    heard_b: list[Any] = []
    a.handlers["t1"] = lambda at, kind, value, retain: heard_a.append(value)
    b.handlers["t1"] = lambda at, kind, value, retain: heard_b.append(value)
    await a.start()
    await b.start()
    try:
        for i in range(20):
            (a if i % 2 else b).observe("t1", 1.0, "value", i)
        await until(lambda: len(heard_a) + len(heard_b) == 20, what="20 readings at the peers")
        assert heard_b == list(range(1, 20, 2)) and heard_a == list(range(0, 20, 2))  # never back to itself
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "public"])
async def test_the_redis_layer_on_either_path(
    redis_server: Service, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    monkeypatch.setattr(_channels_redis, "FAST", fast)
    layer = RedisLayer(hosts=[f"redis://127.0.0.1:{redis_server.port}/0"], capacity=1, prefix=f"fence{fast}:")
    try:
        channel = await layer.new_channel()
        await layer.group_add("fenced", channel)
        assert await layer.group_members("fenced") == ([channel] if fast else None)
        assert await layer._memberships_intact() is fast  # not known: taken as lost, and renewed
        before = metrics.layer_overflows._value.get()
        for i in range(2):
            await layer.group_send("fenced", {"type": "alert.raised", "n": i})
        assert metrics.layer_overflows._value.get() - before == (
            1 if fast else 0
        )  # counted from the log line
        await layer._drop_connections()  # our own pools: the busy connections too
        assert (await asyncio.wait_for(layer.receive(channel), 5))["n"] == 0
        await _peers_hear_each_other(layer)
    finally:
        await layer.flush()
        await layer.close_pools()


def _start_on_public_paths(gw: GatewayProcess) -> None:
    argv = [sys.executable, "-c", PUBLIC_PATHS, "run", "--config", str(gw.config_path)]
    with open(gw.workdir / "gateway.log", "ab") as log:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        gw.proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=gw.workdir, env=env)
    gw.wait_healthy()


# A gateway with every fence off, as on a library that lacks what they use.
PUBLIC_PATHS = """
import sys
from gateway.layers import _channels, _channels_redis
from gateway.web import _django
from protocols import _autobahn, _paho, _twisted
for fence in (_channels, _channels_redis, _django, _autobahn, _paho, _twisted):
    fence.FAST = False
from gateway.cli import main
sys.exit(main())
"""


async def test_a_gateway_with_every_fence_on_the_public_path(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", start=False)
    _start_on_public_paths(gw)
    status, _ = http_get(f"{gw.url}/api/alerts")
    assert status == 401  # refused, and now logged by Django as well
    sockets = [await ws_connect(gw) for _ in range(2)]
    for ws in sockets:
        assert (await recv_json(ws))["type"] == "hello"
    await publish(mosquitto.port, "zigbee2mqtt/front_door", '{"contact":false}')
    raised = [await recv_until(ws, alert_event("raised")) for ws in sockets]
    assert raised[0]["alert"]["id"] == raised[1]["alert"]["id"]
    await publish(mosquitto.port, "zigbee2mqtt/front_door", '{"contact":true}')
    for ws in sockets:
        await recv_until(ws, alert_event("cleared"))
        await ws.close()
    assert gw.stop() == 0
    assert "Traceback" not in gw.log
    assert "Unauthorized: /api/alerts" in gw.log
