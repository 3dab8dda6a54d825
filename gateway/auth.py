"""Named tokens: who a request or a socket is, compared in constant time."""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from django.core import signing

SESSION_COOKIE = "gateway_session"
_SALT = "gateway.session"


def token_owner(tokens: dict[str, str], presented: str | None) -> str | None:
    """The name of the token presented, or None. With no tokens configured, everyone is 'anonymous'."""
    if not tokens:
        return "anonymous"
    if not presented:
        return None
    owner = None
    given = presented.encode("utf-8")
    for name, token in tokens.items():
        # Compare against every token so the time does not tell which one was close.
        if hmac.compare_digest(given, token.encode("utf-8")):
            owner = name
    return owner


def session_value(name: str) -> str:
    return signing.dumps({"t": name}, salt=_SALT, compress=False)


def session_owner(tokens: dict[str, str], cookie: str | None) -> str | None:
    if not cookie:
        return None
    try:
        data = signing.loads(cookie, salt=_SALT, max_age=30 * 24 * 3600)
    except signing.BadSignature:
        return None
    name = data.get("t") if isinstance(data, dict) else None
    return name if isinstance(name, str) and name in tokens else None


def scope_owner(scope: dict[str, Any], tokens: dict[str, str]) -> str | None:
    """From `?token=`, `Authorization: Bearer`, or the dashboard's session cookie."""
    if not tokens:
        return "anonymous"
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return token_owner(tokens, query["token"][0])
    headers = dict(scope.get("headers", []))
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return token_owner(tokens, auth[7:].strip())
    cookie_header = headers.get(b"cookie", b"").decode("latin-1")
    if cookie_header:
        morsel = SimpleCookie(cookie_header).get(SESSION_COOKIE)
        return session_owner(tokens, morsel.value if morsel else None)
    return None


def origin_allowed(scope: dict[str, Any], allowed: list[str]) -> bool:
    """Same origin (Origin's host:port equals Host), or listed; no Origin header is fine (not a browser)."""
    headers = dict(scope.get("headers", []))
    origin = headers.get(b"origin")
    if origin is None:
        return True
    text = origin.decode("latin-1").rstrip("/")
    if text in (o.rstrip("/") for o in allowed):
        return True
    host = headers.get(b"host", b"").decode("latin-1")
    _, sep, netloc = text.partition("://")
    return bool(sep) and bool(host) and netloc.lower() == host.lower()
