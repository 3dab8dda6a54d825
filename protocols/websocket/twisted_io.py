"""Twisted's HTTP channel under the guard of protocols.websocket.http_guard (checked with Twisted 26.10.0).

`guarded_channel` subclasses `HTTPChannel` through its unprefixed but undocumented methods
(`lineReceived`, `lineLengthExceeded`, `allHeadersReceived`, `allContentReceived`,
`rawDataReceived`, `requestDone`) and attributes (`requests`, `length`, `persistent`); no
private name (Twisted's are in protocols._twisted). tests/test_internals.py fails by name if
an upgrade changes one of them. Twisted is imported inside the function: its reactor must be
daphne's asyncio one, installed first.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from protocols.websocket.http_guard import (
    LINGER_SECONDS,
    MAX_HEAD,
    MAX_HEADER_LINES,
    MAX_LINE,
    Guard,
    Head,
    Refusal,
    count_refusal,
)


def guarded_channel(guard: Guard) -> type:
    """Twisted's HTTP channel under `guard` (imported here: Twisted's reactor must be daphne's)."""
    from twisted.internet import reactor
    from twisted.web.http import HTTPChannel

    clock: Any = reactor

    class GuardedChannel(HTTPChannel):  # type: ignore[misc]
        MAX_LENGTH = MAX_LINE
        totalHeadersSize = MAX_HEAD  # noqa: N815 - Twisted's name (its own 400; ours comes first)
        _guard = guard
        began = False  # any byte of a request since it started waiting
        _refused = False
        _request_line: bytes | None = None
        _head_bytes = 0
        _head_lines = 0
        _body_limit = 0
        _body_read: int | None = None  # counted while a chunked body arrives

        def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
            super().connectionMade()
            self._guard.waiting(self)

        def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
            if self._refused:
                return  # lingering: read and dropped
            self.began = True
            super().dataReceived(data)

        def lineReceived(self, line: bytes) -> None:  # noqa: N802 - Twisted's name
            if self._refused:
                return
            self._head_bytes += len(line) + 2
            self._head_lines += 1
            if self._head_bytes > MAX_HEAD or self._head_lines > MAX_HEADER_LINES:
                self._too_large(line)
                return
            if self._request_line is None and line:
                self._request_line = line
            super().lineReceived(line)

        def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802 - Twisted's name
            self._too_large(line)

        def _too_large(self, line: bytes) -> None:
            if self._request_line is None:
                self.refuse(Refusal(414, f"the request line is over {MAX_LINE} bytes", reason="uri_too_long"))
            else:
                self.refuse(
                    Refusal(
                        431,
                        f"a header line is over {MAX_LINE} bytes, or all of them over {MAX_HEAD}",
                        reason="headers_too_large",
                    )
                )

        def allHeadersReceived(self) -> None:  # noqa: N802 - Twisted's name
            verdict = self._guard.gate(self._head())
            if isinstance(verdict, Refusal):
                self.refuse(verdict)
                return
            if self.length is not None and self.length > verdict:
                self.refuse(Refusal(413, f"the body is over {verdict} bytes", reason="body_too_large"))
                return
            self._body_limit = verdict
            self._body_read = 0 if self.length is None else None
            super().allHeadersReceived()

        def rawDataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
            if self._refused:
                return
            if self._body_read is not None:  # chunked: counted as sent, its framing included
                self._body_read += len(data)
                if self._body_read > self._body_limit + MAX_LINE:
                    limit = self._body_limit
                    self.refuse(Refusal(413, f"the body is over {limit} bytes", reason="body_too_large"))
                    return
            super().rawDataReceived(data)

        def allContentReceived(self) -> None:  # noqa: N802 - Twisted's name
            if self._refused:  # refused at its head, which had no body: the application never sees it
                return
            self._guard.arrived(self)
            self.began = False
            self._request_line = None
            self._head_bytes = self._head_lines = 0
            self._body_read = None
            super().allContentReceived()

        def requestDone(self, request: Any) -> None:  # noqa: N802 - Twisted's name
            if self.persistent and not self._refused:
                # Kept alive: a stranger again until its next request (first, because Twisted goes
                # on at once with a request the client sent before this answer, if there is one).
                self._guard.waiting(self)
            super().requestDone(request)

        def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted's name
            self._guard.arrived(self)
            super().connectionLost(reason)

        def refuse(self, refusal: Refusal) -> None:
            """Answer now, without reading further; then close."""
            if self._refused:
                return
            self._refused = True
            self._guard.arrived(self)
            transport: Any = self.transport
            count_refusal(str(transport.getPeer().host), refusal)
            self.setTimeout(None)  # Twisted's idle timeout: the linger below ends it
            transport.write(refusal.response())
            transport.loseWriteConnection()
            clock.callLater(LINGER_SECONDS, transport.abortConnection)

        def _head(self) -> Head:
            method, _, rest = (self._request_line or b"").partition(b" ")
            target = rest.rpartition(b" ")[0]
            path, _, query = target.partition(b"?")
            request = self.requests[-1]
            headers = [
                (name.lower(), value)
                for name, values in request.requestHeaders.getAllRawHeaders()
                for value in values
            ]
            transport: Any = self.transport
            peer = transport.getPeer()
            return Head(
                method.decode("latin-1"),
                unquote(path.decode("latin-1")),
                query,
                headers,
                self.length,
                [peer.host, peer.port] if hasattr(peer, "host") else None,
            )

    return GuardedChannel
