"""daphne's HTTP side held against strangers: what a connection may cost before Django sees it.

Every connection is a stranger until its request head is in, and Twisted would hold any
number of them for as long as they drip a byte a minute, and read any body whole before the
application saw its headers (a 200 MiB POST was in memory before its 401). Here:

- connections whose request has not fully arrived are bounded in number (`max_half_open`:
  past it the oldest is closed) and in time (`request_timeout`, from the connection or the
  previous response: 408 if a request had begun);
- a request line over 16 KiB is answered 414, a header line over it or a head over 32 KiB
  (or of more than 100 lines) 431, where Twisted closed without a word or said 400;
- once the head is in, the `Gate` says what the body may be: a refusal (401, 413) is answered
  at once and the body is never read; else at most so many bytes are (413 past them).

It subclasses Twisted's `HTTPChannel` through its undocumented but unprefixed methods
(`lineReceived`, `lineLengthExceeded`, `allHeadersReceived`, `allContentReceived`,
`rawDataReceived`, `requestDone`) and attributes (`requests`, `length`, `persistent`),
checked with Twisted 26.10.0; tests/test_internals.py fails if an upgrade changes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from gateway import logs, metrics

MAX_LINE = 16 * 1024
MAX_HEAD = 32 * 1024
MAX_HEADER_LINES = 100
# After a refusal, what the client still sends is read and dropped for this long: a connection
# closed with unread data is reset, and the reset can destroy the answer before it is read.
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class Refusal:
    status: int
    error: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    reason: str = ""  # for /metrics (gateway_bad_input_total{protocol="http"}); none: not counted

    def response(self) -> bytes:
        body = json.dumps({"error": self.error}).encode()
        head = [
            b"HTTP/1.1 %d %s" % (self.status, HTTPStatus(self.status).phrase.encode()),
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
            *(name + b": " + value for name, value in self.headers),
        ]
        return b"\r\n".join(head) + b"\r\n\r\n" + body


@dataclass(frozen=True)
class Head:
    """A request head as the gate sees it: before any of the body is read."""

    method: str
    path: str  # percent-decoded, as Django routes it
    query_string: bytes
    headers: list[tuple[bytes, bytes]]  # names in lower case, as in an ASGI scope
    length: int | None  # Content-Length; None: chunked


# A refusal, or how many body bytes may be read.
Gate = Callable[[Head], Refusal | int]
MAX_BODY = 64 * 1024


def any_body_up_to_the_limit(head: Head) -> int:
    return MAX_BODY


_log = logs.RateLimit(interval=10.0)


def _refused(client: str, refusal: Refusal) -> None:
    if refusal.reason:
        metrics.bad_input.labels("http", refusal.reason).inc()
    allowed, held = _log.allow(refusal.reason or str(refusal.status))
    if allowed:
        logs.web.warning(
            "HTTP %d to %s: %s (%d more like it not logged)", refusal.status, client, refusal.error, held
        )


@dataclass
class Guard:
    """What every connection of one listener shares: the gate, the limits, the half-open ones."""

    gate: Gate = any_body_up_to_the_limit
    max_half_open: int = 256
    request_timeout: float = 10.0
    # Channels, insertion-ordered (the oldest first), each with the call that times it out.
    half_open: dict[Any, Any] = field(default_factory=dict)

    def waiting(self, channel: Any) -> None:
        """`channel` waits for a request now: it counts, and has `request_timeout` to send one."""
        if channel in self.half_open:
            return
        while len(self.half_open) >= self.max_half_open:
            oldest = next(iter(self.half_open))
            self.arrived(oldest)
            metrics.bad_input.labels("http", "half_open").inc()
            allowed, held = _log.allow("half_open")
            if allowed:
                logs.web.warning(
                    "closed a connection that sent no whole request: http.max_half_open (%d) reached "
                    "(%d more not logged)",
                    self.max_half_open,
                    held,
                )
            oldest.transport.abortConnection()
        from twisted.internet import reactor

        clock: Any = reactor
        self.half_open[channel] = clock.callLater(self.request_timeout, self._timed_out, channel)

    def arrived(self, channel: Any) -> None:
        call = self.half_open.pop(channel, None)
        if call is not None and call.active():
            call.cancel()

    def _timed_out(self, channel: Any) -> None:
        self.half_open.pop(channel, None)
        if channel.began:
            channel.refuse(Refusal(408, "the request did not arrive in time", reason="request_timeout"))
        else:  # an idle keep-alive connection (or one that never spoke): closed without a word
            channel.transport.loseConnection()


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
            _refused(str(transport.getPeer().host), refusal)
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
            return Head(
                method.decode("latin-1"),
                unquote(path.decode("latin-1")),
                query,
                headers,
                self.length,
            )

    return GuardedChannel
