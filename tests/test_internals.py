"""The undocumented parts of daphne, Twisted and autobahn that protocols/websocket/ builds on.

Checked with daphne 4.2.3, Twisted 26.10.0 and autobahn 26.11.1. An upgrade that renames or
reshapes one of them fails here by name, before a test of behaviour fails for a reason far away.
"""

from __future__ import annotations

import inspect

import daphne.server  # noqa: F401 - first, as in the gateway: Twisted's reactor is its asyncio one
import pytest


def source(obj: object) -> str:
    return inspect.getsource(obj)  # type: ignore[arg-type]


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


def test_twisted_transport_internals_that_the_websocket_server_reads() -> None:
    from twisted.internet.abstract import FileDescriptor
    from twisted.internet.tcp import Connection

    write = source(FileDescriptor.write)
    assert "self._tempDataLen" in write and "self._maybePauseProducer()" in write
    assert "self.bufferSize" in source(FileDescriptor._isSendBufferFull)
    assert "self.producer.resumeProducing()" in source(FileDescriptor.doWrite)
    for name in ("dataBuffer", "offset", "_writeDisconnected", "bufferSize"):
        assert hasattr(FileDescriptor, name), name
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


def test_autobahn_close_and_framing_names() -> None:
    from autobahn.twisted.websocket import WebSocketServerFactory
    from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol

    assert "invalid close code" in source(WebSocketProtocol.sendClose)  # why serverClose bypasses it
    assert "code" in inspect.signature(WebSocketProtocol.sendCloseFrame).parameters
    assert "if self.failByDrop:" in source(WebSocketProtocol._fail_connection)
    assert hasattr(PreparedMessage(b"x", False, False, False), "payloadHybi")
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(failByDrop=False, closeHandshakeTimeout=5)
    assert (factory.failByDrop, factory.closeHandshakeTimeout) == (False, 5)
    for name in ("_perMessageCompress", "send_queue", "sendPreparedMessage", "dropConnection"):
        assert name in source(WebSocketProtocol), name


@pytest.mark.parametrize(("package", "checked"), [("daphne", "4.2"), ("twisted", "26."), ("autobahn", "26.")])
def test_the_versions_checked_are_the_ones_installed(package: str, checked: str) -> None:
    from importlib.metadata import version

    installed = version(package)
    assert installed.startswith(checked), f"{package} {installed}: check it against this file first"
