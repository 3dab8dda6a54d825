"""Named tokens: who a request or a socket is, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from http.cookies import CookieError, SimpleCookie
from typing import Any, Literal
from urllib.parse import parse_qs

from django.core import signing

SESSION_COOKIE = "gateway_session"
SESSION_DAYS = 30
_SALT = "gateway.session"

Via = Literal["none", "query", "bearer", "cookie", "open"]


def token_owner(tokens: dict[str, str], presented: str | None) -> str | None:
    """The name of the token presented, or None. With no tokens configured, everyone is 'anonymous'."""
    if not tokens:
        return "anonymous"
    if not presented:
        return None
    owner = None
    given = presented.encode("utf-8", "replace")
    for name, token in tokens.items():
        # Compare against every token so the time does not tell which one was close.
        if hmac.compare_digest(given, token.encode("utf-8")):
            owner = name
    return owner


def _fingerprint(token: str) -> str:
    # A session names its token by a hash of it: changing the token ends its sessions.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]


def session_value(tokens: dict[str, str], name: str) -> str:
    return signing.dumps({"t": name, "f": _fingerprint(tokens[name])}, salt=_SALT, compress=False)


def session_owner(tokens: dict[str, str], cookie: str | None) -> str | None:
    if not cookie:
        return None
    try:
        data = signing.loads(cookie, salt=_SALT, max_age=SESSION_DAYS * 24 * 3600)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict):
        return None
    name, fingerprint = data.get("t"), data.get("f")
    if not isinstance(name, str) or name not in tokens or not isinstance(fingerprint, str):
        return None
    return name if hmac.compare_digest(fingerprint, _fingerprint(tokens[name])) else None


def cookie_value(scope: dict[str, Any], name: str) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            try:
                morsel = SimpleCookie(value.decode("latin-1")).get(name)
            except CookieError:
                return None
            return morsel.value if morsel else None
    return None


def authenticate(scope: dict[str, Any], tokens: dict[str, str]) -> tuple[str | None, Via]:
    """(who, how) from `?token=`, `Authorization: Bearer`, or the dashboard's session cookie.

    How matters to CSRF: only a cookie rides along on a request another site forges.
    """
    if not tokens:
        return "anonymous", "open"
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return token_owner(tokens, query["token"][0]), "query"
    headers = dict(scope.get("headers", []))
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return token_owner(tokens, auth[7:].strip()), "bearer"
    cookie = cookie_value(scope, SESSION_COOKIE)
    if cookie:
        return session_owner(tokens, cookie), "cookie"
    return None, "none"


def scope_owner(scope: dict[str, Any], tokens: dict[str, str]) -> str | None:
    return authenticate(scope, tokens)[0]


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
