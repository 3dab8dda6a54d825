"""The web face's defences: one brake on wrong tokens, server-side sessions, CSRF, Host, Origin, headers."""

from __future__ import annotations

import http.client
import math
import re
import signal
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.config import parse_config
from gateway.web.auth import client_address
from gateway.web.security import host_allowed
from protocols.ratelimit import TokenBrake, TokenBucket
from tests.conftest import (
    GatewayFactory,
    GatewayProcess,
    free_port,
    metric,
    publish,
    recv_json,
    recv_until,
    until,
    ws_connect,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_brake_doubles_the_wait_caps_it_and_forgets() -> None:
    clock = Clock()
    brake = TokenBrake(free_tries=3, first_wait=2.0, max_wait=30.0, forget_after=600.0, clock=clock)
    assert [brake.failed("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 2.0]
    assert brake.wait("10.0.0.1") == 2.0 and brake.wait("10.0.0.2") == 0.0  # per client
    clock.now += 2.0
    assert brake.wait("10.0.0.1") == 0.0
    assert [brake.failed("10.0.0.1") for _ in range(4)] == [4.0, 8.0, 16.0, 30.0]
    clock.now += 601.0
    assert brake.wait("10.0.0.1") == 0.0 and brake.failed("10.0.0.1") == 0.0  # forgotten


def test_token_brake_memory_is_bounded() -> None:
    brake = TokenBrake(max_clients=100)
    for i in range(1000):
        brake.failed(f"client-{i}")
    assert len(brake._clients) == 100


def _peer(address: str, *forwarded: str) -> dict[str, Any]:
    return {"client": (address, 40000), "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]}


def test_x_forwarded_for_names_the_client_only_from_a_listed_proxy() -> None:
    proxies = ["10.0.0.5", "192.168.0.0/24"]
    # Not from a listed proxy: the header is the client's own word, and ignored.
    assert client_address(_peer("203.0.113.9", "10.9.9.9"), proxies) == "203.0.113.9"
    assert client_address(_peer("203.0.113.9", "10.9.9.9"), []) == "203.0.113.9"
    # From a listed proxy: the nearest address no listed proxy added; what the client wrote
    # further left (here 1.2.3.4) does not count.
    assert client_address(_peer("10.0.0.5", "1.2.3.4, 198.51.100.7"), proxies) == "198.51.100.7"
    assert client_address(_peer("10.0.0.5", "1.2.3.4, 198.51.100.7, 192.168.0.3"), proxies) == "198.51.100.7"
    assert client_address(_peer("10.0.0.5", "1.2.3.4", "198.51.100.7"), proxies) == "198.51.100.7"
    assert client_address(_peer("::ffff:10.0.0.5", "2001:db8::1"), proxies) == "2001:db8::1"
    # Garbage where the proxy's entry should be: the proxy's own address, not the garbage.
    assert client_address(_peer("10.0.0.5", "198.51.100.7, <script>"), proxies) == "10.0.0.5"
    assert client_address(_peer("10.0.0.5"), proxies) == "10.0.0.5"


# Over HTTP against the gateway process


def request(
    gw: GatewayProcess, method: str, path: str, body: str = "", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=5)
    try:
        conn.request(method, path, body=body.encode(), headers=headers or {})
        response = conn.getresponse()
        headers: dict[str, str] = {}
        for name, value in response.getheaders():  # repeated ones (Set-Cookie) comma-joined
            headers[name.lower()] = f"{headers[name.lower()]}, {value}" if name.lower() in headers else value
        return response.status, headers, response.read().decode()
    finally:
        conn.close()


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    return dict(re.findall(r"(?:^|, )(\w+)=([^;]*)", headers.get("set-cookie", "")))


def _form_login(
    gw: GatewayProcess, token: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str, str]:
    """The form as a browser sends it: (status, headers, page) of the POST, and the CSRF cookie before it."""
    status, got, page = request(gw, "GET", "/login", headers=headers)
    assert status == 200
    csrf_cookie = _cookies(got)["csrftoken"]
    field = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert field is not None
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": field.group(1), "token": token})
    sent = {
        **(headers or {}),
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": f"csrftoken={csrf_cookie}",
    }
    return (*request(gw, "POST", "/login", form, sent), csrf_cookie)


def _login(gw: GatewayProcess, proxy_https: bool = False) -> dict[str, str]:
    """Signed in with the form: the CSRF and session cookies."""
    # A TLS-terminating proxy says so; Django then also wants a same-origin Referer.
    https = {"X-Forwarded-Proto": "https", "Referer": f"https://127.0.0.1:{gw.http_port}/login"}
    status, headers, _, csrf_before = _form_login(gw, "ops-secret-token", https if proxy_https else None)
    assert status == 303 and headers["location"] == "/"
    flags = next(
        c for c in re.split(r", (?=\w+=)", headers["set-cookie"]) if c.startswith("gateway_session=")
    )
    assert "HttpOnly" in flags and "SameSite=Strict" in flags
    assert ("Secure" in flags) is proxy_https
    cookies = _cookies(headers)
    assert cookies["csrftoken"] != csrf_before  # rotated at login
    return {"csrftoken": cookies["csrftoken"], "gateway_session": cookies["gateway_session"]}


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


def test_the_names_a_gateway_is_served_as() -> None:
    config = parse_config(
        {
            "http": {"bind": "gateway.lan:8000", "hosts": ["alerts.example.net", ".example.org"]},
            "telegram": {
                "token": "123456:telegram-token-for-tests",
                "mode": "webhook",
                "webhook_url": "https://bot.example.com/base",
                "webhook_secret": "webhook-secret-1234",
            },
        },
        {},
        "test",
    )
    for host in ("gateway.lan:8000", "LOCALHOST", "alerts.example.net", "a.b.example.org", "example.org:443"):
        assert host_allowed(host, config), host
    for host in (
        "10.1.2.3:8000",
        "[::1]:8000",
        "[fe80::1]",
        "bot.example.com",
    ):  # IP addresses, the webhook's
        assert host_allowed(host, config), host
    for host in ("rebind.attacker", "alerts.example.net.attacker", "example.com", "evil/x", "", "a b"):
        assert not host_allowed(host, config), host


# Every way a token is tried, one brake (issue 15, item 6)

TOKENS_LINE = 'tokens = { ops = "ops-secret-token", kiosk = "kiosk-secret-token" }'
ORIGINS_LINE = 'allowed_origins = ["http://dashboard.example"]'


def _configured(gw: GatewayProcess, http: str = "", tokens: bool = True) -> GatewayProcess:
    """Start `gw` with more [http] lines, or without tokens."""
    text = gw.config_path.read_text().replace(ORIGINS_LINE, f"{ORIGINS_LINE}\n{http}")
    gw.config_path.write_text(text if tokens else text.replace(TOKENS_LINE, ""))
    gw.start()
    return gw


async def _attempt(gw: GatewayProcess, way: str, token: str, address: str) -> str:
    """One try of `token` in one of the ways a token is presented, from `address` (through
    the trusted proxy): "ok", "wrong" or "throttled", as the client sees it."""
    via = {"X-Forwarded-For": address}
    if way == "websocket":
        try:
            ws = await ws_connect(gw, token=token, additional_headers=via)
        except InvalidStatus as refused:
            return (
                "throttled" if refused.response.status_code == 403 else f"http {refused.response.status_code}"
            )
        try:
            kind = (await recv_json(ws))["type"]
        except ConnectionClosed as closed:
            return "wrong" if closed.rcvd is not None and closed.rcvd.code == 4401 else str(closed)
        await ws.close()
        return "ok" if kind == "hello" else kind
    if way == "form":
        status = _form_login(gw, token, via)[0]
    elif way == "query":
        status, _, _ = request(gw, "GET", f"/?token={token}", headers=via)
    elif way == "bearer":
        status, _, _ = request(gw, "GET", "/api/alerts", headers={**via, "Authorization": f"Bearer {token}"})
    else:  # cookie: a session key
        status, _, _ = request(
            gw, "GET", "/api/alerts", headers={**via, "Cookie": f"gateway_session={token}"}
        )
    return {200: "ok", 303: "ok", 401: "wrong", 429: "throttled"}.get(status, str(status))


async def test_every_way_a_token_is_tried_shares_one_brake_per_client(
    gateway_factory: GatewayFactory,
) -> None:
    gw = _configured(gateway_factory(start=False), 'trusted_proxies = ["127.0.0.1"]')
    session = _login(gw)["gateway_session"]
    ways = ("form", "query", "bearer", "websocket")
    for i, way in enumerate((*ways, "cookie")):
        client = f"10.0.0.{i + 1}"
        guesses = [await _attempt(gw, way, f"guess-{way}-{n}-abcdefgh", client) for n in range(3)]
        assert guesses == ["wrong"] * 3, way
        # The third wrong one earned a 2 s wait: every way is refused untried, the right token too...
        assert [await _attempt(gw, other, "ops-secret-token", client) for other in ways] == [
            "throttled"
        ] * 4, way
        # ...but a session is no guess: it goes on working at the braked address.
        assert await _attempt(gw, "cookie", session, client) == "ok"
    # Per client: another address behind the same proxy is not braked.
    assert await _attempt(gw, "bearer", "ops-secret-token", "10.0.0.99") == "ok"
    assert "wrong form token from 10.0.0.1" in gw.log  # the client the proxy names, not the proxy
    # Each braked handshake was refused for the brake, not for its Host, Origin or the socket cap.
    assert metric(gw, 'gateway_bad_input_total{protocol="websocket",reason="token_throttled"}') == 5


async def test_a_flood_of_wrong_tokens_is_braked_and_logged_in_a_few_lines(
    gateway_factory: GatewayFactory,
) -> None:
    gw = _configured(gateway_factory(start=False), 'trusted_proxies = ["127.0.0.1"]')
    lines_before = len(gw.log.splitlines())
    started = time.monotonic()
    bearer = Counter([await _attempt(gw, "bearer", f"guess-{n:05d}", "10.1.0.1") for n in range(300)])
    websocket = Counter([await _attempt(gw, "websocket", f"guess-{n:05d}", "10.1.0.2") for n in range(100)])
    took = time.monotonic() - started
    # 3 free tries, then waits of 2, 4, 8 s...: in the flood's time, a handful are tried at all.
    assert bearer["wrong"] + bearer["throttled"] == 300 and 3 <= bearer["wrong"] <= 3 + math.log2(took + 2)
    assert websocket["wrong"] + websocket["throttled"] == 100 and 3 <= websocket["wrong"] <= 3 + math.log2(
        took + 2
    )
    assert metric(gw, 'gateway_bad_input_total{protocol="http",reason="token"}') == bearer["wrong"]
    assert (
        metric(gw, 'gateway_bad_input_total{protocol="http",reason="token_throttled"}') == bearer["throttled"]
    )
    assert (
        metric(gw, 'gateway_bad_input_total{protocol="websocket",reason="token_throttled"}')
        == websocket["throttled"]
    )
    # One line per kind per 10 s, each saying how many it held back; none from Django per response.
    new_lines = gw.log.splitlines()[lines_before:]
    assert 2 <= len([line for line in new_lines if "token" in line]) <= 2 * (1 + took // 10)
    assert not [line for line in new_lines if "Unauthorized" in line or "Too Many Requests" in line]


async def test_x_forwarded_for_from_an_unlisted_peer_is_ignored(gateway_factory: GatewayFactory) -> None:
    gw = _configured(gateway_factory(start=False), 'trusted_proxies = ["10.9.9.9"]')
    # A guesser that writes a new X-Forwarded-For each time is still one client: its own address.
    assert [await _attempt(gw, "bearer", f"guess-{n}-abcdefgh", f"10.2.0.{n}") for n in range(3)] == [
        "wrong"
    ] * 3
    assert await _attempt(gw, "bearer", "ops-secret-token", "10.2.0.99") == "throttled"
    assert "wrong bearer token from 127.0.0.1" in gw.log


@pytest.fixture
async def hostile_site() -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """A real web server for another site's page: `await hostile_site(html)` -> its URL.

    At http://localhost:<port>, so another site than the gateway at 127.0.0.1 for the browser,
    and a local one (Chromium lets no public page reach a local address at all).
    """
    pages: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=pages[int(request.match_info["n"])], content_type="text/html")

    app = web.Application()
    app.router.add_get("/{n}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    async def page(html: str) -> str:
        pages.append(html)
        return f"http://localhost:{port}/{len(pages) - 1}"

    yield page
    await runner.cleanup()


async def test_a_token_link_on_another_site_is_neither_tried_nor_counted(
    gateway_factory: GatewayFactory, browser: Any, hostile_site: Callable[[str], Awaitable[str]]
) -> None:
    gw = gateway_factory()
    page = await (await browser.new_context()).new_page()
    # A hostile page makes the user's browser send wrong tokens, and offers the right one as a link.
    guesses = "".join(f'<img src="{gw.url}/?token=guess-{n}-abcdefgh">' for n in range(10))
    link = f'<a id="kiosk" href="{gw.url}/?token=ops-secret-token">dashboard</a>'
    await page.goto(await hostile_site(guesses + link))
    await page.wait_for_function("[...document.images].every(image => image.complete)")
    await page.click("#kiosk")
    await page.wait_for_url(gw.url + "/login")  # from another site, a token link only leads to the form
    assert metric(gw, 'gateway_bad_input_total{protocol="http",reason="token"}') == 0
    # The user's own kiosk link (typed, or a bookmark) still signs in: nothing was counted against them.
    await page.goto(f"{gw.url}/?token=ops-secret-token")
    await page.wait_for_selector("#connection.conn-live")
    assert page.url == gw.url + "/" and await page.text_content(".who") == "ops"


# Only the gateway's own names and origins (issue 15, item 7)


async def test_without_tokens_a_foreign_host_or_origin_changes_nothing(
    gateway_factory: GatewayFactory, browser: Any, hostile_site: Callable[[str], Awaitable[str]]
) -> None:
    gw = _configured(gateway_factory(start=False), 'hosts = ["gateway.lan", ".example.net"]', tokens=False)
    ws = await ws_connect(gw, token=None)
    await recv_json(ws)
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact": false}')
    alert_id = (await recv_until(ws, lambda m: m.get("event") == "raised"))["alert"]["id"]
    port = gw.http_port

    # DNS rebinding: the attacker's name, pointed at 127.0.0.1, is not a name this gateway has.
    for host in ("rebind.attacker", "gateway.lan.attacker", "example.net.attacker", "localhost.attacker"):
        status, _, text = request(gw, "GET", "/api/alerts", headers={"Host": f"{host}:{port}"})
        assert status == 400 and "http.hosts" in text, host
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(gw, token=None, additional_headers={"Host": f"{host}:{port}"})
        assert refused.value.response.status_code == 403, host
    for host in ("127.0.0.1", "localhost", "gateway.lan", "alerts.example.net", "[::1]", "192.168.1.20"):
        status, _, _ = request(gw, "GET", "/api/alerts", headers={"Host": f"{host}:{port}"})
        assert status == 200, host
    assert metric(gw, 'gateway_bad_input_total{protocol="http",reason="host"}') == 4
    assert metric(gw, 'gateway_bad_input_total{protocol="websocket",reason="host"}') == 4

    # A form on another site posts to the ack URL: refused, the alert stays unacknowledged.
    page = await (await browser.new_context()).new_page()
    form = f'<form method="post" action="{gw.url}/api/alerts/{alert_id}/ack"><button>win</button></form>'
    await page.goto(await hostile_site(form))
    async with page.expect_response(f"{gw.url}/api/alerts/{alert_id}/ack") as posted:
        await page.click("button")
    assert (await posted.value).status == 403
    status, _, text = request(gw, "GET", "/api/alerts?state=active")
    assert status == 200 and alert_id in text
    assert metric(gw, 'gateway_bad_input_total{protocol="http",reason="origin"}') == 1
    # A script (no Origin) and the dashboard's own page (same origin) still may.
    status, _, _ = request(gw, "POST", f"/api/alerts/{alert_id}/ack", headers={"Origin": gw.url})
    assert status == 200
    assert (await recv_until(ws, lambda m: m.get("event") == "acknowledged"))["alert"]["id"] == alert_id
    await ws.close()


# Sessions on the server (issue 15, item 11)


async def test_logout_ends_the_session_on_the_server_and_the_cookie_is_only_a_key(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory()
    cookies = _login(gw)  # also: the CSRF token is a new one after the login
    key = cookies["gateway_session"]
    assert re.fullmatch(r"[a-z0-9]{32}", key)  # random: nothing of the token, nor of a hash of it
    session = {"Cookie": f"gateway_session={key}"}
    assert request(gw, "GET", "/api/alerts", headers=session)[0] == 200
    both = {"Cookie": f"gateway_session={key}; csrftoken={cookies['csrftoken']}"}
    status, headers, _ = request(gw, "POST", "/logout", "", {**both, "X-CSRFToken": cookies["csrftoken"]})
    assert status == 303 and headers["location"] == "/login"

    # A copy of the cookie kept from before the logout opens nothing any more.
    assert request(gw, "GET", "/api/alerts", headers=session)[0] == 401
    ws = await ws_connect(gw, token=None, additional_headers=session)
    with pytest.raises(ConnectionClosed) as closed:
        await recv_json(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    status, headers, _ = request(gw, "GET", "/", headers=session)
    assert status == 302 and headers["location"] == "/login" and 'gateway_session=""' in headers["set-cookie"]

    # An ended session is no guess: its user may sign in again at once. A changed token (a
    # reload is enough) ends the sessions made with it.
    key = _login(gw)["gateway_session"]
    session = {"Cookie": f"gateway_session={key}"}
    assert request(gw, "GET", "/api/alerts", headers=session)[0] == 200
    gw.config_path.write_text(gw.config_path.read_text().replace("ops-secret-token", "ops-new-token-1"))
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    await until(lambda: "config reloaded" in gw.log, what="the reload")
    assert request(gw, "GET", "/api/alerts", headers=session)[0] == 401
