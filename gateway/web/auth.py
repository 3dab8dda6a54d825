"""Who a request or a socket is: named tokens compared in constant time, dashboard sessions kept
on the server, and one brake for every way a token is tried."""

from __future__ import annotations

import hmac
import ipaddress
import math
import re
from dataclasses import dataclass
from functools import cache
from http.cookies import CookieError, SimpleCookie
from importlib import import_module
from typing import Any, Literal
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.conf import settings
from django.utils.crypto import salted_hmac

from gateway.config import Config
from gateway.ops import logs, metrics
from protocols.ratelimit import TokenBrake

_SALT = "gateway.session"
# What Django's session stores make (32 of a-z0-9): anything else is not looked up.
_SESSION_KEY = re.compile(r"[a-z0-9]{32}")
# A page of another site can make a browser send these; the user must not pay for them.
_FOREIGN_FETCH = (b"cross-site", b"same-site")

Via = Literal["none", "form", "query", "bearer", "cookie", "open"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def _store(key: str | None = None) -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore(session_key=key)


def _token_mark(token: str) -> str:
    # Kept with the session, on the server: a changed token ends its sessions. Keyed with the
    # secret key, so a copy of the database does not help to guess the token either.
    return salted_hmac(_SALT, token).hexdigest()


@database_sync_to_async
def start_session(tokens: dict[str, str], name: str) -> str:
    """A new session for the token `name`; returns its key, all the cookie carries."""
    store = _store()
    type(store).clear_expired()
    store["t"], store["m"] = name, _token_mark(tokens[name])
    store.save()
    return str(store.session_key)


@database_sync_to_async
def end_session(key: str) -> None:
    if _SESSION_KEY.fullmatch(key):
        _store(key).delete()


@database_sync_to_async
def session_owner(tokens: dict[str, str], key: str) -> str | None:
    data = _store(key).load()
    name, mark = data.get("t"), data.get("m")
    if not isinstance(name, str) or name not in tokens or not isinstance(mark, str):
        return None
    return name if hmac.compare_digest(mark, _token_mark(tokens[name])) else None


def cookie_value(scope: dict[str, Any], name: str) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            try:
                morsel = SimpleCookie(value.decode("latin-1")).get(name)
            except CookieError:
                return None
            return morsel.value if morsel else None
    return None


def credential(scope: dict[str, Any]) -> tuple[Via, str]:
    """What a request presents: `?token=`, `Authorization: Bearer`, or the dashboard's session cookie.

    A `?token=` in a request that another site's page made (`Sec-Fetch-Site`) is not tried:
    counted, it would let that page lock the user out; answered, it would tell that page
    whether its guess was right.
    """
    headers = dict(scope.get("headers", []))
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token") and headers.get(b"sec-fetch-site") not in _FOREIGN_FETCH:
        return "query", query["token"][0]
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return "bearer", auth[7:].strip()
    cookie = cookie_value(scope, settings.SESSION_COOKIE_NAME)
    if cookie:
        return "cookie", cookie
    return "none", ""


@cache
def _networks(proxies: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def _ip(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # 10.0.0.5 as a socket on [::] sees it
    return address


def client_address(scope: dict[str, Any], trusted_proxies: list[str]) -> str:
    """The client's address: the peer's, or, when the peer is a listed proxy, the nearest
    address in `X-Forwarded-For` that no listed proxy added (those further left are the
    client's own words)."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    networks = _networks(tuple(trusted_proxies))
    address = _ip(peer)
    if address is None or not any(address in network for network in networks):
        return peer
    forwarded_for = [value for key, value in scope.get("headers", []) if key == b"x-forwarded-for"]
    for hop in reversed(b",".join(forwarded_for).split(b",")):
        forwarded = _ip(hop.decode("latin-1"))
        if forwarded is None:
            break  # not an address: what the last proxy saw is all that is known
        address = forwarded
        if not any(address in network for network in networks):
            break
    return str(address)


def _brake_key(address: str) -> str:
    # One IPv6 subscriber has a whole /64: per address, it would have 2**64 brakes.
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network((ip, 64), strict=False))
    return address


@dataclass(frozen=True, slots=True)
class Caller:
    """Who presented what. `wait`: seconds before this client's next token is tried;
    `throttled`: this one was refused untried, for the wrong ones before it."""

    who: str | None
    via: Via
    wait: int = 0
    throttled: bool = False


class TokenGate:
    """Every way a token is tried (the form, `?token=`, Bearer, the WebSocket, the session
    cookie) goes through `identify`: one brake per client address, log lines rate-limited."""

    def __init__(self, brake: TokenBrake | None = None) -> None:
        self.brake = brake if brake is not None else TokenBrake()
        self._log = logs.RateLimit(interval=10.0)

    async def identify(self, scope: dict[str, Any], config: Config, form_token: str | None = None) -> Caller:
        caller, session = self._check(scope, config, form_token)
        if caller is not None:
            return caller
        # A key as this gateway makes them: valid, or of a session that ended (logout, expiry,
        # a changed token). No guess (32 random characters are hopeless to guess), so neither
        # braked for nor counted: a guesser behind the same NAT or proxy cannot end others'
        # sessions, and a stale cookie does not lock its user out of the form.
        return Caller(await session_owner(config.auth.tokens, session), "cookie")

    def identify_now(self, scope: dict[str, Any], config: Config) -> Caller | None:
        """`identify` without the database: None for a session key, which only the database knows."""
        return self._check(scope, config, None)[0]

    def _check(
        self, scope: dict[str, Any], config: Config, form_token: str | None
    ) -> tuple[Caller | None, str]:
        """The caller, or None and the session key to look up."""
        tokens = config.auth.tokens
        if not tokens:
            return Caller("anonymous", "open"), ""
        via: Via
        via, presented = ("form", form_token) if form_token is not None else credential(scope)
        if via == "none":
            return Caller(None, via), ""
        if via == "cookie" and _SESSION_KEY.fullmatch(presented):
            return None, presented
        return self._try(scope, config, via, presented), ""

    def _try(self, scope: dict[str, Any], config: Config, via: Via, presented: str) -> Caller:
        """A token (or a cookie that is no session key of ours) tried, through the brake."""
        tokens = config.auth.tokens
        address = client_address(scope, config.http.trusted_proxies)
        client = _brake_key(address)
        protocol = "websocket" if scope.get("type") == "websocket" else "http"
        left = self.brake.wait(client)
        if left > 0:
            metrics.bad_input.labels(protocol, "token_throttled").inc()
            self._warn("throttled", "too many wrong tokens from %s: a %s token not tried", address, via)
            return Caller(None, via, math.ceil(left), throttled=True)
        who = None if via == "cookie" else token_owner(tokens, presented)  # a forged cookie: wrong
        if who is not None:
            return Caller(who, via)
        earned = self.brake.failed(client)
        metrics.bad_input.labels(protocol, "token").inc()
        self._warn("wrong", "wrong %s token from %s", via, address)
        return Caller(None, via, math.ceil(earned))

    def _warn(self, key: str, message: str, *args: Any) -> None:
        # One key for all clients: an attacker with many addresses gets no more lines.
        allowed, held = self._log.allow(key)
        if allowed:
            logs.web.warning(message + " (%d more not logged)", *args, held)


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
