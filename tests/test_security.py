"""The dashboard's defences: the login brake, sessions tied to their token, CSRF, headers and assets."""

from __future__ import annotations

import http.client
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from gateway.auth import authenticate, session_value
from gateway.ratelimit import TokenBucket
from gateway.security import LoginBrake
from tests.conftest import GatewayFactory, GatewayProcess, publish, recv_json, recv_until, ws_connect


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_login_brake_doubles_the_wait_caps_it_and_forgets() -> None:
    clock = Clock()
    brake = LoginBrake(free_tries=3, first_wait=2.0, max_wait=30.0, forget_after=600.0, clock=clock)
    assert [brake.failed("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 2.0]
    assert brake.wait("10.0.0.1") == 2.0 and brake.wait("10.0.0.2") == 0.0  # per client
    clock.now += 2.0
    assert brake.wait("10.0.0.1") == 0.0
    assert [brake.failed("10.0.0.1") for _ in range(4)] == [4.0, 8.0, 16.0, 30.0]
    clock.now += 601.0
    assert brake.wait("10.0.0.1") == 0.0 and brake.failed("10.0.0.1") == 0.0  # forgotten
    brake.failed("10.0.0.1")
    brake.succeeded("10.0.0.1")
    assert brake.failed("10.0.0.1") == 0.0


def test_login_brake_memory_is_bounded() -> None:
    brake = LoginBrake(max_clients=100)
    for i in range(1000):
        brake.failed(f"client-{i}")
    assert len(brake._clients) == 100


@pytest.fixture
def signing_key() -> Iterator[None]:
    if not settings.configured:
        settings.configure(CHANNEL_LAYERS={})
    before = getattr(settings._wrapped, "SECRET_KEY", "")
    settings.SECRET_KEY = "test-key-for-signing-only"
    yield
    settings.SECRET_KEY = before


def _scope(cookie: str) -> dict[str, Any]:
    return {"headers": [(b"cookie", f"gateway_session={cookie}".encode())], "query_string": b""}


def test_a_session_ends_when_its_token_changes(signing_key: None) -> None:
    tokens = {"ops": "first-secret"}
    cookie = session_value(tokens, "ops")
    assert "first-secret" not in cookie
    assert authenticate(_scope(cookie), tokens) == ("ops", "cookie")
    assert authenticate(_scope(cookie), {"ops": "rotated-secret"}) == (None, "cookie")
    assert authenticate(_scope(cookie), {"kiosk": "first-secret"}) == (None, "cookie")
    assert authenticate(_scope(cookie + "x"), tokens) == (None, "cookie")  # tampered
    assert authenticate(_scope(cookie), {}) == ("anonymous", "open")


# Over HTTP against the gateway process


def request(
    gw: GatewayProcess, method: str, path: str, body: str = "", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=5)
    try:
        conn.request(method, path, body=body.encode(), headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        conn.close()


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    # http.client folds repeated Set-Cookie headers into one, comma-joined.
    return dict(re.findall(r"(?:^|, )(\w+)=([^;]*)", headers.get("set-cookie", "")))


def _login(gw: GatewayProcess, proxy_https: bool = False) -> dict[str, str]:
    """The form as a browser sends it: CSRF cookie and field, then the session cookie."""
    status, headers, page = request(gw, "GET", "/login")
    assert status == 200
    csrf_cookie = _cookies(headers)["csrftoken"]
    field = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert field is not None
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": field.group(1), "token": "ops-secret-token"})
    status, headers, _ = request(
        gw,
        "POST",
        "/login",
        form,
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={csrf_cookie}",
            # A TLS-terminating proxy says so; Django then also wants a same-origin Referer.
            **(
                {"X-Forwarded-Proto": "https", "Referer": f"https://127.0.0.1:{gw.http_port}/login"}
                if proxy_https
                else {}
            ),
        },
    )
    assert status == 303 and headers["location"] == "/"
    flags = headers["set-cookie"].split("gateway_session=", 1)[1]
    assert "HttpOnly" in flags and "SameSite=Strict" in flags
    assert ("Secure" in flags) is proxy_https
    return {"csrftoken": csrf_cookie, "gateway_session": _cookies(headers)["gateway_session"]}


async def test_forms_and_cookie_posts_need_csrf_bearer_posts_do_not(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, text = request(gw, "POST", "/login", "token=ops-secret-token", form)
    assert status == 403 and "CSRF check failed" in text
    status, _, _ = request(gw, "POST", "/logout", "", form)
    assert status == 403

    cookies = _login(gw)
    ws = await ws_connect(gw)
    await recv_json(ws)
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact": false}')
    alert_id = (await recv_until(ws, lambda m: m.get("event") == "raised"))["alert"]["id"]
    session = f"gateway_session={cookies['gateway_session']}"

    # The cookie alone (what a forged cross-site form would carry) is refused...
    status, _, text = request(gw, "POST", f"/api/alerts/{alert_id}/ack", "", {"Cookie": session})
    assert status == 403 and "CSRF" in text
    # ...the same request from another origin even with the CSRF cookie and header...
    both = f"{session}; csrftoken={cookies['csrftoken']}"
    forged = {"Cookie": both, "X-CSRFToken": cookies["csrftoken"], "Origin": "http://evil.example"}
    status, _, _ = request(gw, "POST", f"/api/alerts/{alert_id}/ack", "", forged)
    assert status == 403
    # ...and the dashboard's own request, with the CSRF token, goes through.
    own = {"Cookie": both, "X-CSRFToken": cookies["csrftoken"], "Origin": gw.url}
    status, _, text = request(gw, "POST", f"/api/alerts/{alert_id}/ack", "", own)
    assert status == 200 and '"acknowledged_by": "web:ops"' in text

    # A bearer token is not ambient: no CSRF token needed.
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact": true}')
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact": false}')
    second = (await recv_until(ws, lambda m: m.get("event") == "raised"))["alert"]["id"]
    bearer = {"Authorization": "Bearer kiosk-secret-token"}
    status, _, text = request(gw, "POST", f"/api/alerts/{second}/ack", "", bearer)
    assert status == 200 and "web:kiosk" in text
    await ws.close()


async def test_the_session_cookie_is_secure_behind_an_https_proxy(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    assert _login(gw, proxy_https=True)["gateway_session"]


async def test_pages_carry_security_headers_and_assets_are_whitelisted(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory()
    for path in ("/login", "/healthz", "/static/app.js"):
        _, headers, _ = request(gw, "GET", path)
        assert headers["content-security-policy"].startswith("default-src 'none'"), path
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
    status, headers, body = request(gw, "GET", "/static/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and "AlertStream" in body
    status, _, _ = request(gw, "GET", "/static/app.js", headers={"If-None-Match": headers["etag"]})
    assert status == 304
    for path in (
        "/static/index.html",
        "/static/..%2Fsettings.py",
        "/static/%2E%2E%2Fpages.py",
        "/static/x.js",
    ):
        status, _, _ = request(gw, "GET", path)
        assert status == 404, path
    status, headers, _ = request(gw, "GET", "/")
    assert status == 302 and headers["location"] == "/login"
    status, _, _ = request(gw, "GET", "/api/alerts", headers={"Cookie": "gateway_session=forged"})
    assert status == 401  # an API never redirects


async def test_no_tokens_configured_means_no_login(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(start=False)
    text = gw.config_path.read_text().replace(
        'tokens = { ops = "ops-secret-token", kiosk = "kiosk-secret-token" }', ""
    )
    gw.config_path.write_text(text)
    gw.start()
    status, _, page = request(gw, "GET", "/")
    assert status == 200 and 'id="active"' in page and "anonymous" in page
    status, headers, _ = request(gw, "GET", "/login")
    assert status == 302 and headers["location"] == "/"


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0)
    assert [bucket.take(now=10.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(now=10.4) is False  # 0.8 of a token back
    assert bucket.take(now=10.5) is True  # one whole token after 0.5 s at 2 a second
    assert [bucket.take(now=100.0) for _ in range(4)] == [True, True, True, False]  # never above the burst
