"""Browser-facing defences: response headers with a strict CSP, and the gate that refuses a
request for a foreign Host or a state-changing one from a foreign Origin, whatever the auth."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from django.http.request import split_domain_port, validate_host

from gateway.config import Config
from gateway.ops import logs, metrics
from gateway.web.auth import client_address, origin_allowed

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


# Methods that change nothing (RFC 9110 "safe"): a foreign page may send them, as any link does.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_REFUSALS = {
    "host": (400, "Refused: the gateway is not served under this name (Host). List it in http.hosts."),
    "origin": (403, "Refused: a page of another site (Origin) may not change anything here."),
}
_refusal_log = logs.RateLimit(interval=10.0)


def host_allowed(host: str, config: Config) -> bool:
    """Whether `host` (a Host header) names this gateway: bind's host, localhost, http.hosts,
    the Telegram webhook's, or an IP address (a DNS rebinding needs a name that the attacker's
    DNS answers)."""
    domain, _ = split_domain_port(host)
    if not domain:
        return False
    try:
        ipaddress.ip_address(domain.strip("[]"))
    except ValueError:
        names = ["localhost", config.http.host.lower(), *config.http.hosts]
        if config.telegram.webhook_url:
            names.append(urlsplit(config.telegram.webhook_url).hostname or "")
        return validate_host(domain, names)
    return True


def refusal(scope: dict[str, Any], config: Config) -> str | None:
    """Why an HTTP request or a WebSocket handshake is refused before any view or consumer
    sees it ("host" or "origin"), or None. Without a Host (not a browser) nothing is refused."""
    headers = dict(scope.get("headers", []))
    host = headers.get(b"host")
    if host is not None and not host_allowed(host.decode("latin-1"), config):
        return "host"
    # A handshake is a change of state whatever its method: a page of another site must not
    # hold a socket that sees every alert and may acknowledge them.
    changes_state = scope["type"] == "websocket" or scope.get("method") not in SAFE_METHODS
    if changes_state and not origin_allowed(scope, config.http.allowed_origins):
        return "origin"
    return None


async def refuse(reason: str, scope: dict[str, Any], receive: Any, send: Any, config: Config) -> None:
    """Answer a refused request without reading its body: 400 or 403, or a WebSocket refused at
    the handshake (403)."""
    protocol = scope["type"]
    metrics.bad_input.labels(protocol, reason).inc()
    allowed, held = _refusal_log.allow(reason)
    if allowed:
        headers = dict(scope.get("headers", []))
        logs.web.warning(
            "refused %s %r from %s: Host %r, Origin %r (%d more not logged)",
            protocol,
            scope.get("path", "")[:200],
            client_address(scope, config.http.trusted_proxies),
            headers.get(b"host", b"")[:200].decode("latin-1"),
            headers.get(b"origin", b"")[:200].decode("latin-1"),
            held,
        )
    if protocol == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close"})
        return
    status, text = _REFUSALS[reason]
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *((name.lower().encode(), value.encode()) for name, value in HEADERS.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
