"""The page at `/` in a real headless Chromium (the dashboard itself is issue 6; this is its harness)."""

from __future__ import annotations

from typing import Any

from tests.conftest import GatewayFactory


async def test_the_page_loads_in_chromium(gateway_factory: GatewayFactory, browser: Any) -> None:
    gw = gateway_factory(site="cabin")
    page = await browser.new_page()
    response = await page.goto(gw.url + "/")
    assert response is not None and response.status == 200
    assert "cabin" in (await page.text_content("body") or "")
    await page.close()
