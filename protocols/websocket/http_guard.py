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

The policy is here; Twisted's channel that applies it is protocols.websocket.twisted_io's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from gateway.ops import logs, metrics

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
    client: list[Any] | None = None  # [host, port], as daphne puts it in a scope


# A refusal, or how many body bytes may be read.
Gate = Callable[[Head], Refusal | int]
MAX_BODY = 64 * 1024


def any_body_up_to_the_limit(head: Head) -> int:
    return MAX_BODY


_log = logs.RateLimit(interval=10.0)


def count_refusal(client: str, refusal: Refusal) -> None:
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
