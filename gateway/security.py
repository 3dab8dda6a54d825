"""Browser-facing defences: response headers with a strict CSP, and the brake on wrong login tokens."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from asgiref.sync import markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

# Nothing inline and nothing from elsewhere: a sensor name that slipped into the
# page as markup still could not run. 'self' covers ws:// to the same host.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # not no-referrer: Chromium then sends `Origin: null` on form posts, which CSRF must refuse.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

Handler = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


def security_headers(get_response: Handler) -> Handler:
    """Middleware (async only, so requests never hop to a thread for it)."""

    async def middleware(request: HttpRequest) -> HttpResponseBase:
        response = await get_response(request)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    markcoroutinefunction(middleware)
    return middleware


security_headers.async_capable = True  # type: ignore[attr-defined]
security_headers.sync_capable = False  # type: ignore[attr-defined]


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class LoginBrake:
    """Per client address: a few free tries, then each wrong token doubles the wait before the next one.

    The wait is a refusal with Retry-After, not a held connection, so a flood
    costs the gateway nothing. Forgotten after `forget_after` quiet seconds.
    """

    def __init__(
        self,
        free_tries: int = 3,
        first_wait: float = 2.0,
        max_wait: float = 300.0,
        forget_after: float = 900.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_tries, self.first_wait, self.max_wait = free_tries, first_wait, max_wait
        self.forget_after, self.max_clients, self.clock = forget_after, max_clients, clock
        self._clients: OrderedDict[str, _Record] = OrderedDict()

    def wait(self, client: str) -> float:
        """Seconds this client must still wait before its next try (0: may try now)."""
        record = self._get(client)
        return 0.0 if record is None else max(0.0, record.locked_until - self.clock())

    def failed(self, client: str) -> float:
        """Count a wrong token; returns the wait it earned."""
        now = self.clock()
        record = self._get(client) or _Record()
        record.failures += 1
        record.last = now
        extra = record.failures - self.free_tries
        wait = 0.0 if extra < 0 else min(self.max_wait, self.first_wait * 2**extra)
        record.locked_until = now + wait
        self._clients[client] = record
        self._clients.move_to_end(client)
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        return wait

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)

    def _get(self, client: str) -> _Record | None:
        record = self._clients.get(client)
        if record is not None and self.clock() - record.last > self.forget_after:
            del self._clients[client]
            return None
        return record
