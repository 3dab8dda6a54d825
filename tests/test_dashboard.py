"""The dashboard at `/` in Debian's headless Chromium, driven by Playwright, against the gateway process.

What is asserted is what a person at the screen would see: text on the page,
what a separate WebSocket client hears, what the Telegram stand-in received.
Screenshots land in the test's temporary folder; `scripts/screenshots` runs the layout test
with GATEWAY_SCREENSHOTS=docs/screenshots to update the pictures the README shows.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    ROOT,
    GatewayFactory,
    GatewayProcess,
    Service,
    alert_event,
    publish,
    recv_json,
    recv_until,
    ws_connect,
)
from tests.telegram_standin import BotApiStandin
from tests.test_telegram import ALICE, TOKEN, say, telegram_toml

README_SHOTS = (ROOT / "docs" / "screenshots").resolve()
EXAMPLE = ROOT / "gateway.example.toml"
DOOR, BOILER = "zigbee2mqtt/front_door", "sensors/boiler"
XSS = "<img src=x onerror=window.__pwned=1>"

LABEL = f"""
[[sensors]]
id = "label"
name = "Label {XSS}"
zone = "lab"
topic = "lab/label"
format = "plain"

[[rules]]
id = "label-says"
sensor = "label"
when = {{ equals = "{XSS}" }}
severity = "info"
message = "{{sensor.name}} says {{value}}"
"""


@pytest.fixture
async def standin() -> AsyncIterator[BotApiStandin]:
    async with BotApiStandin(token=TOKEN) as api:
        yield api


async def open_dashboard(
    browser: Any, gw: GatewayProcess, token: str = "kiosk-secret-token", **context: Any
) -> Any:
    """A kiosk screen: `?token=` in the URL, then the live page."""
    page = await (await browser.new_context(**context)).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.errors = errors
    await page.goto(f"{gw.url}/?token={token}")
    await page.wait_for_selector("#connection.conn-live")
    return page


async def test_login_wrong_token_logout_and_kiosk(gateway_factory: GatewayFactory, browser: Any) -> None:
    gw = gateway_factory(site="cabin")
    context = await browser.new_context()
    page = await context.new_page()
    response = await page.goto(gw.url + "/")
    assert page.url == gw.url + "/login"  # not signed in: sent to the form
    assert response is not None and "cabin" in await page.title()
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe" not in policy and "default-src 'none'" in policy

    await page.fill("#token", "not-the-token")
    async with page.expect_response(gw.url + "/login") as refused:
        await page.click("button[type=submit]")
    assert (await refused.value).status == 401
    assert await page.text_content("#login-error") == "That token is not valid."
    assert "gateway_session" not in {c["name"] for c in await context.cookies()}

    await page.fill("#token", "ops-secret-token")
    await page.click("button[type=submit]")
    await page.wait_for_selector("#connection.conn-live")
    assert page.url == gw.url + "/"
    assert await page.text_content(".who") == "ops"
    assert await page.text_content("#site") == "cabin"
    session = next(c for c in await context.cookies() if c["name"] == "gateway_session")
    assert session["httpOnly"] is True and session["sameSite"] == "Strict" and session["secure"] is False
    assert "ops-secret-token" not in session["value"]

    await page.click("text=Log out")
    await page.wait_for_url(gw.url + "/login")
    await page.goto(gw.url + "/")
    assert page.url == gw.url + "/login"  # the session is gone
    await context.close()

    # A kiosk screen: the token in the URL signs it in and leaves the address bar.
    kiosk = await open_dashboard(browser, gw)
    assert kiosk.url == gw.url + "/"
    assert await kiosk.text_content(".who") == "kiosk"
    # A wrong one in the URL gets the form and the message.
    stranger = await (await browser.new_context()).new_page()
    response = await stranger.goto(gw.url + "/?token=guess")
    assert response is not None and response.status == 401
    assert await stranger.text_content("#login-error") == "That token is not valid."
    assert kiosk.errors == []


async def test_repeated_wrong_tokens_are_slowed_down(gateway_factory: GatewayFactory, browser: Any) -> None:
    gw = gateway_factory()
    page = await browser.new_page()
    await page.goto(gw.url + "/login")

    async def attempt(token: str) -> Any:
        await page.fill("#token", token)
        async with page.expect_response(gw.url + "/login") as response:
            await page.click("button[type=submit]")
        return await response.value

    assert [(await attempt(f"guess-{i}")).status for i in range(3)] == [401, 401, 401]
    assert "Wait 2 s before the next try" in (await page.text_content("#login-error") or "")
    # Locked for a while: even the right token is refused, with Retry-After.
    locked = await attempt("ops-secret-token")
    assert locked.status == 429 and locked.headers["retry-after"] in ("1", "2")
    assert "Too many wrong tokens" in (await page.text_content("#login-error") or "")
    assert 'reason="token_throttled"' in _metrics(gw)

    await asyncio.sleep(int(locked.headers["retry-after"]))  # the lock is a duration, nothing to await
    await page.fill("#token", "ops-secret-token")
    await page.click("button[type=submit]")
    await page.wait_for_selector("#connection.conn-live")
    assert "wrong form token from 127.0.0.1" in gw.log


async def test_trigger_appears_live_and_sensor_strings_stay_text(
    gateway_factory: GatewayFactory, browser: Any
) -> None:
    gw = gateway_factory(extra=LABEL)
    page = await open_dashboard(browser, gw)
    await page.evaluate("window.__sameDocument = true")
    tile = page.locator('[data-sensor-id="label"]')
    assert await tile.locator(".name").text_content() == f"Label {XSS}"
    assert await tile.locator(".availability").text_content() == "no data yet"

    await publish(gw.mqtt_port, BOILER, '{"temp": {"water": 64.5}}')
    boiler = page.locator('[data-sensor-id="boiler"]')
    await boiler.locator(".value", has_text="64.5").wait_for()
    assert await boiler.locator(".availability").text_content() == "online"

    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    alert = page.locator("#active .alert", has_text="Front door opened")
    await alert.wait_for()
    assert "sev-critical" in (await alert.get_attribute("class") or "")
    assert await page.text_content("#active-count") == "1"
    assert (
        await page.locator("#history .entry", has_text="Front door opened").count() == 0
    )  # open: above only
    assert await page.locator('[data-sensor-id="front-door"].alerting').count() == 1

    # A payload that is markup: shown as the characters it is, never parsed.
    await publish(gw.mqtt_port, "lab/label", XSS)
    await tile.locator(".value", has_text=XSS).wait_for()
    said = page.locator("#active .alert", has_text="says")
    await said.wait_for()
    assert (await said.locator(".message").text_content() or "").endswith(f"Label {XSS} says {XSS}")
    assert await page.locator("img[src=x]").count() == 0
    assert await page.evaluate("window.__pwned") is None
    assert await page.evaluate("window.__sameDocument") is True  # no reload happened
    assert page.errors == []


async def test_acknowledge_on_the_page_reaches_websocket_and_telegram(
    gateway_factory: GatewayFactory, browser: Any, standin: BotApiStandin
) -> None:
    gw = gateway_factory(start=False, extra=telegram_toml(standin, [ALICE]))
    gw.start(wait=False)
    await asyncio.to_thread(gw.wait_healthy, 45.0)  # off the loop: the stand-in lives on it
    await say(standin, ALICE, "/subscribe")
    ws = await ws_connect(gw)
    await recv_json(ws)  # hello
    page = await open_dashboard(browser, gw, token="ops-secret-token")
    await page.locator('[data-protocol="telegram"].proto-up').wait_for()

    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    alert_id = (await recv_until(ws, alert_event("raised")))["alert"]["id"]
    message = (await standin.wait_sent(2, timeout=15, method="sendMessage", chat_id=ALICE))[-1]
    assert alert_id in message["text"]

    item = page.locator(f'#active [data-alert-id="{alert_id}"]')
    await item.locator("button", has_text="Acknowledge").click()
    acked = await recv_until(ws, alert_event("acknowledged"), timeout=10)
    assert acked["alert"]["id"] == alert_id and acked["alert"]["acknowledged_by"] == "web:ops"
    edit = (await standin.wait_sent(1, timeout=15, method="editMessageText", chat_id=ALICE))[-1]
    assert edit["message_id"] == message["message_id"]
    assert "Acknowledged by web:ops" in edit["text"]
    await item.locator(".acked", has_text="Acknowledged by web:ops").wait_for()
    assert await item.locator("button.ack").is_hidden()
    # Still open, still listed: the counter counts it, and says none waits for a hand.
    assert await page.text_content("#active-count") == "1"
    assert await page.text_content("#unacked") == "0 unacknowledged"
    await ws.close()
    assert page.errors == []


async def test_restart_while_an_alert_is_raised_page_resumes_and_shows_it_once(
    gateway_factory: GatewayFactory, browser: Any, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    context = await browser.new_context()
    # The page's clock is the test's: its reconnect timer can be held while the gateway is away.
    await context.clock.install()
    page = await context.new_page()
    await page.goto(f"{gw.url}/?token=kiosk-secret-token")
    await page.wait_for_selector("#connection.conn-live")
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    await page.locator("#active .alert", has_text="Front door opened").wait_for()

    assert await asyncio.to_thread(gw.stop) == 0
    await page.wait_for_selector("#connection.conn-down")
    await page.clock.pause_at(int(time.time() * 1000) + 1000)
    # While it is down, the boiler overheats; the broker keeps the message for the gateway's session.
    await publish(mosquitto.port, BOILER, '{"temp": {"water": 91}}')
    await asyncio.to_thread(gw.start)
    watcher = await ws_connect(gw)
    hello = await recv_json(watcher)
    hot = [a for a in hello["alerts"] if a["rule"] == "boiler-hot"]
    alert = hot[0] if hot else (await recv_until(watcher, alert_event("raised")))["alert"]
    assert alert["message"] == "Boiler at 91"

    await page.clock.resume()
    await page.wait_for_selector("#connection.conn-live", timeout=20_000)
    item = page.locator(f'#active [data-alert-id="{alert["id"]}"]')
    await item.locator(".missed", has_text="while disconnected").wait_for()
    await page.locator(".toast", has_text="1 alert raised while this screen was disconnected").wait_for()
    assert await item.count() == 1
    assert await page.locator("#active .alert").count() == 2  # the door, still open, and the boiler
    assert await page.locator("#history .entry").count() == 0  # nothing has ended yet

    # Live again: the door closes, and the page follows without a duplicate.
    await publish(mosquitto.port, DOOR, '{"contact": true}')
    door = page.locator("#history .entry", has_text="Front door opened")
    await door.locator(".steps", has_text="cleared").wait_for()
    assert await page.locator("#active .alert").count() == 1
    assert await page.locator("#history .entry").count() == 1
    await watcher.close()


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


def _screenshot_folder(tmp_path: Path) -> Path:
    """Only scripts/screenshots points this at docs/screenshots: test runs leave the README's pictures be."""
    folder = Path(os.environ.get("GATEWAY_SCREENSHOTS") or tmp_path / "screenshots").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def example_gateway(gateway_factory: GatewayFactory, site: str = "home") -> GatewayProcess:
    """A gateway with gateway.example.toml's sensors and rules: the README's pictures show those."""
    gw = gateway_factory(site=site, start=False)
    ours, example = gw.config_path.read_text(), EXAMPLE.read_text()
    # From the example's first [[sensors]] table on (its comments name the table too).
    first = example.index("\n[[sensors]]\n") + 1
    gw.config_path.write_text(ours[: ours.index("[[sensors]]")] + example[first:])
    gw.start()
    return gw


async def test_layout_on_a_desktop_and_on_a_phone(
    gateway_factory: GatewayFactory, browser: Any, tmp_path: Path
) -> None:
    shots = _screenshot_folder(tmp_path)
    readme_pictures = _digests(README_SHOTS)
    gw = example_gateway(gateway_factory)
    await publish(gw.mqtt_port, "zigbee2mqtt/washer_leak", '{"water_leak": false}')
    await publish(gw.mqtt_port, "zigbee2mqtt/hall_motion", '{"occupancy": true}')
    await publish(gw.mqtt_port, DOOR, '{"contact": true}')
    # A sensor reporting once a second: the chart gets a point per reading.
    for reading in (-19.5, -19.1, -18.4, -16.0, -17.2):
        await publish(gw.mqtt_port, "zigbee2mqtt/freezer", f'{{"temperature": {reading}}}')
        await asyncio.sleep(1.2)  # the sensor's pace, not a wait for an event
    await publish(gw.mqtt_port, "zigbee2mqtt/hall_motion", '{"occupancy": false}')  # raised and cleared
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')

    desktop = await open_dashboard(
        browser, gw, token="ops-secret-token", color_scheme="dark", viewport={"width": 1280, "height": 860}
    )
    await desktop.locator("#active .alert", has_text="Front door opened").wait_for()
    await desktop.locator('[data-sensor-id="freezer"] .spark').wait_for()
    points = await desktop.locator('[data-sensor-id="freezer"] polyline').get_attribute("points")
    assert points is not None and len(points.split()) == 5
    assert await desktop.text_content('[data-sensor-id="freezer"] .spark-range') == "min -19.5 °Cmax -16 °C"
    await desktop.locator("#history .entry", has_text="Motion: Hall motion").wait_for()
    zones = await desktop.locator(".zone h3").all_text_contents()
    assert zones == ["house", "kitchen", "utility"]
    assert await desktop.text_content('#summary [data-kind="open"]') == "1open door/window"
    alerts_box = await desktop.locator(".alerts-panel").bounding_box()
    sensors_box = await desktop.locator(".sensors-panel").bounding_box()
    assert alerts_box and sensors_box and sensors_box["x"] > alerts_box["x"] + alerts_box["width"] - 1
    await desktop.screenshot(path=str(shots / "desktop.png"), full_page=True)

    phone = await open_dashboard(
        browser,
        gw,
        token="ops-secret-token",
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    await phone.locator("#active .alert", has_text="Front door opened").wait_for()
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone: {width}px"
    boxes = [
        await phone.locator(f".{name}-panel").bounding_box() for name in ("alerts", "sensors", "history")
    ]
    assert all(boxes) and boxes[0]["y"] < boxes[1]["y"] < boxes[2]["y"]  # one column: alerts first
    assert all(abs(b["x"] - boxes[0]["x"]) < 1 for b in boxes)
    button = await phone.locator("#active button", has_text="Acknowledge").first.bounding_box()
    assert button and button["height"] >= 44 and button["width"] > 300  # a thumb hits it
    await phone.screenshot(path=str(shots / "phone.png"), full_page=True)

    login = await (
        await browser.new_context(color_scheme="dark", viewport={"width": 640, "height": 480})
    ).new_page()
    await login.goto(gw.url + "/login")
    await login.screenshot(path=str(shots / "login.png"))
    assert desktop.errors == [] and phone.errors == []
    taken = _digests(shots)
    assert sorted(taken) == ["desktop.png", "login.png", "phone.png"]
    if shots != README_SHOTS:
        assert _digests(README_SHOTS) == readme_pictures


def _metrics(gw: GatewayProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as response:
        return response.read().decode()
