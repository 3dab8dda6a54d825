"""Silences, escalation and the mode on the dashboard, in headless Chromium against one gateway process
(modes on): what a person at the screen sees and does, and what the API then says."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.async_api import expect

from tests.conftest import GatewayFactory, GatewayProcess, publish
from tests.test_dashboard import open_dashboard
from tests.test_silences_api import api, modes_gateway

DOOR, BOILER, PUMP = "zigbee2mqtt/front_door", "sensors/boiler", "lab/pump"
PUMP_RULE = """
[[sensors]]
id = "pump"
name = "Pump"
zone = "lab"
topic = "lab/pump"
format = "plain"

[[rules]]
id = "pump-stopped"
sensor = "pump"
when = { equals = "off" }
clear = { equals = "on" }
severity = "warning"
message = "Pump stopped"
escalate = [{ after = "1s", notify = ["alerts.oncall"] }]
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = modes_gateway(tmp_path_factory.mktemp("dashboard-manage"), PUMP_RULE)
    yield gateway
    gateway.kill()


def _silences(gw: GatewayProcess) -> list[dict[str, Any]]:
    status, body = api(gw, "GET", "/api/silences")
    assert status == 200
    return body["silences"]  # type: ignore[no-any-return]


async def test_mute_an_alert_and_a_sensor_then_unmute(gw: GatewayProcess, browser: Any) -> None:
    page = await open_dashboard(browser, gw, token="ops-secret-token")
    assert await page.locator("#silences-empty").is_visible()
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    alert = page.locator("#active .alert", has_text="Front door opened")
    await alert.wait_for()
    assert await alert.locator(".muted-badge").count() == 0

    await alert.get_by_role("button", name="Mute Front door opened for 1 hour").click()
    await alert.locator(".muted-badge", has_text="🔕 muted").wait_for()
    assert "is-muted" in (await alert.get_attribute("class") or "")
    assert await alert.get_by_role("button", name="Mute Front door opened for 1 hour").is_hidden()
    listed = page.locator("#silences .silence", has_text="sensor front-door · rule door-opened")
    await listed.wait_for()
    assert "by web:ops" in (await listed.locator(".meta").text_content() or "")
    assert await page.text_content("#silences-count") == "1"
    [silence] = _silences(gw)
    assert (silence["sensor"], silence["rule"], silence["created_by"]) == (
        "front-door",
        "door-opened",
        "web:ops",
    )
    # Its rule on its sensor only: the door's tile can still be muted as a whole.
    door_tile = page.locator('[data-sensor-id="front-door"]')
    assert await door_tile.locator(".muted-badge").is_hidden()

    boiler = page.locator('[data-sensor-id="boiler"]')
    await boiler.get_by_role("button", name="Mute Boiler for 1 hour").click()
    await boiler.locator(".muted-badge", has_text="🔕 muted").wait_for()
    assert await boiler.get_by_role("button", name="Mute Boiler for 1 hour").is_hidden()
    await page.locator("#silences .silence", has_text="sensor boiler").wait_for()
    assert sorted(s["sensor"] for s in _silences(gw)) == ["boiler", "front-door"]

    # Unmute both: gone from the list, the marks with them.
    await listed.get_by_role("button", name="Unmute").click()
    await listed.wait_for(state="detached")
    await alert.locator(".muted-badge").wait_for(state="detached")
    assert "is-muted" not in (await alert.get_attribute("class") or "")
    await (
        page.locator("#silences .silence", has_text="sensor boiler")
        .get_by_role("button", name="Unmute")
        .click()
    )
    await page.locator("#silences-empty").wait_for()
    await boiler.locator(".muted-badge").wait_for(state="hidden")
    assert await boiler.get_by_role("button", name="Mute Boiler for 1 hour").is_visible()
    assert _silences(gw) == []

    await publish(gw.mqtt_port, DOOR, '{"contact": true}')
    await alert.wait_for(state="detached")
    assert page.errors == []


async def test_a_silence_made_over_http_appears_live_and_escalation_is_marked(
    gw: GatewayProcess, browser: Any
) -> None:
    page = await open_dashboard(browser, gw)
    await page.evaluate("window.__sameDocument = true")
    await publish(gw.mqtt_port, BOILER, '{"temp": {"water": 90}}')
    hot = page.locator("#active .alert", has_text="Boiler at 90")
    await hot.wait_for()

    status, body = api(
        gw, "POST", "/api/silences", {"zone": "cellar", "for": "2h", "comment": "service visit"}
    )
    assert status == 201
    silence = body["silence"]
    listed = page.locator(f'#silences [data-silence-id="{silence["id"]}"]')
    await listed.wait_for()
    assert await listed.locator(".what").text_content() == "🔕 mutedzone cellar"
    assert "by api:ops · service visit" in (await listed.locator(".meta").text_content() or "")
    # The open alert in that zone is marked, and so is the zone's sensor.
    await hot.locator(".muted-badge").wait_for()
    await page.locator('[data-sensor-id="boiler"] .muted-badge').wait_for(state="visible")

    status, _ = api(gw, "DELETE", f"/api/silences/{silence['id']}")
    assert status == 200
    await listed.wait_for(state="detached")
    await hot.locator(".muted-badge").wait_for(state="detached")
    await page.locator(".toast", has_text="No longer muted, still active: Boiler at 90").wait_for()

    # A rule with an escalation step after 1 s: the alert is marked with its level.
    await publish(gw.mqtt_port, PUMP, "off")
    pump = page.locator("#active .alert", has_text="Pump stopped")
    await pump.locator(".escalated", has_text="⏫ level 1").wait_for(timeout=10_000)
    await page.locator(".toast", has_text="Escalated to level 1: Pump stopped").wait_for()

    await publish(gw.mqtt_port, BOILER, '{"temp": {"water": 60}}')
    await publish(gw.mqtt_port, PUMP, "on")
    await hot.wait_for(state="detached")
    await pump.wait_for(state="detached")
    assert await page.evaluate("window.__sameDocument") is True
    assert page.errors == []


async def test_the_mode_selector_switches_the_site_and_follows_other_changes(
    gw: GatewayProcess, browser: Any
) -> None:
    page = await open_dashboard(browser, gw, token="ops-secret-token")
    select = page.get_by_label("Mode", exact=True)
    await select.wait_for()
    current = api(gw, "GET", "/api/mode")[1]["mode"]
    assert await select.input_value() == current
    options = await select.locator("option").all_text_contents()
    assert options == ["home", "away", "night"]

    target = "away" if current != "away" else "night"
    await select.select_option(target)
    await page.locator(".toast", has_text=f"Mode: {target} (set by web:ops)").wait_for()
    mode = api(gw, "GET", "/api/mode")[1]
    assert (mode["mode"], mode["changed_by"]) == (target, "web:ops")
    await expect(select).to_have_value(target)  # the page renders on its next frame

    # Switched elsewhere (a script over HTTP): the selector follows without a reload.
    assert api(gw, "POST", "/api/mode", {"mode": "home"})[0] == 200
    await page.locator(".toast", has_text="Mode: home (set by api:ops)").wait_for()
    await expect(select).to_have_value("home")
    assert page.errors == []


async def test_without_modes_there_is_no_selector_and_a_phone_fits(
    gateway_factory: GatewayFactory, browser: Any
) -> None:
    plain = gateway_factory()
    await publish(plain.mqtt_port, DOOR, '{"contact": false}')
    phone = await open_dashboard(
        browser, plain, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    alert = phone.locator("#active .alert", has_text="Front door opened")
    await alert.wait_for()
    assert await phone.locator("#mode-box").is_hidden()
    mute = alert.get_by_role("button", name="Mute Front door opened for 1 hour")
    box = await mute.bounding_box()
    assert box and box["height"] >= 44 and box["width"] > 300  # a thumb hits it
    await mute.click()
    listed = phone.locator("#silences .silence", has_text="sensor front-door")
    await listed.wait_for()
    assert "by web:kiosk" in (await listed.locator(".meta").text_content() or "")
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone: {width}px"
    panels = [await phone.locator(f".{n}-panel").bounding_box() for n in ("alerts", "silences", "sensors")]
    assert all(panels) and panels[0]["y"] < panels[1]["y"] < panels[2]["y"]  # type: ignore[index]
    assert phone.errors == []
