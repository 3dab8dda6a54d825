"""GET /api/sensors/<id>/history against a real gateway: the current minute from memory, the minute
whole again after a graceful stop and a restart, old minutes deleted at start, and bad requests."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import (
    GatewayFactory,
    GatewayProcess,
    Service,
    http_get,
    metric,
    publish,
    split_pair,
    until,
)

TOKEN = "ops-secret-token"
DAY = 86400


def history(gw: GatewayProcess, sensor: str, query: str = "", token: str | None = TOKEN) -> tuple[int, Any]:
    return http_get(f"{gw.url}/api/sensors/{sensor}/history{query}", token)


def iso_minute(minute: int) -> str:
    return datetime.fromtimestamp(minute, UTC).strftime("%Y-%m-%dT%H:%M:00.000Z")


def rows(gw: GatewayProcess) -> list[tuple[str, int, float, float, float]]:
    with sqlite3.connect(gw.workdir / "var" / "gateway.sqlite3") as db:
        found = db.execute(
            'select sensor, minute, "min", "max", "last" from gateway_sensorminute order by sensor, minute'
        )
        return list(found)


async def at_a_minute_start() -> int:
    """The minute to publish in: the current one, unless it ends within 5 s (then the next)."""
    now = time.time()
    if now % 60 > 55:
        await asyncio.sleep(60 - now % 60 + 0.05)  # the wall clock is what is awaited here
        now = time.time()
    return int(now // 60 * 60)


async def test_a_minute_is_shown_at_once_and_whole_after_a_graceful_stop_and_restart(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory()
    minute = await at_a_minute_start()
    for value in (71.5, 64.0, 90.25, 75.0):
        await publish(gw.mqtt_port, "sensors/boiler", f'{{"temp": {{"water": {value}}}}}')
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact": true}')
    expected = [{"t": iso_minute(minute), "min": 64.0, "max": 90.25, "last": 75.0}]

    def shown() -> Any:
        status, body = history(gw, "boiler")
        return body if status == 200 and body["points"] and body["points"][-1]["last"] == 75.0 else None

    # From memory: the minute has not been written yet.
    assert (await until(shown, what="the current minute"))["points"] == expected
    assert rows(gw) == []
    assert history(gw, "front-door") == (200, {"points": []})  # a door is not a number

    assert gw.stop() == 0  # SIGTERM: the minute is written on the way out
    assert rows(gw) == [("boiler", minute, 64.0, 90.25, 75.0)]
    # Eight days old: more than the 7 days kept, deleted when the gateway starts.
    with sqlite3.connect(gw.workdir / "var" / "gateway.sqlite3") as db:
        db.execute(
            'insert into gateway_sensorminute (site, sensor, minute, "min", "max", "last", last_ms) '
            "values ('test', 'boiler', ?, 1, 2, 1.5, 0)",
            (minute - 8 * DAY,),
        )
    gw.start()
    await until(lambda: len(rows(gw)) == 1, what="the old minute deleted")
    assert history(gw, "boiler") == (200, {"points": expected})
    assert history(gw, "boiler", "?since=7d") == (200, {"points": expected})


async def test_bad_requests_are_refused_and_counted(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    assert history(gw, "boiler", token=None)[0] == 401
    assert history(gw, "boiler", token="wrong-token-123")[0] == 401
    assert history(gw, "nowhere") == (404, {"error": "no sensor 'nowhere'"})
    for since in ("abc", "0", "-1h", "8d", "1w"):
        status, body = history(gw, "boiler", f"?since={since}")
        assert (status, body["error"]) == (
            400,
            "since must be a duration such as 1h or 24h, at most 7d (the history kept)",
        ), since
    assert metric(gw, 'gateway_bad_input_total{protocol="http",reason="since"}') == 5
    assert history(gw, "boiler", "?since=90m") == (200, {"points": []})


async def test_with_history_off_nothing_is_kept(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(extra='\n[history]\nkeep = "0"\n')
    await publish(gw.mqtt_port, "sensors/boiler", '{"temp": {"water": 50}}')
    await until(lambda: http_get(f"{gw.url}/api/sensors", TOKEN)[1]["sensors"][1]["value"] == 50)
    assert history(gw, "boiler") == (404, {"error": 'no history is kept ([history] keep = "0")'})
    assert gw.stop() == 0
    assert rows(gw) == []


@pytest.mark.timeout(150)  # real time: up to 90 s of waiting, past the suite's 60 s per test
async def test_each_minute_is_stored_within_25_s_of_its_end(gateway_factory: GatewayFactory) -> None:
    """Real time: the minute of a reading is in the database soon after it ends (up to 85 s here)."""
    gw = gateway_factory()
    minute = await at_a_minute_start()
    await publish(gw.mqtt_port, "sensors/boiler", '{"temp": {"water": 42.5}}')
    await until(lambda: rows(gw), timeout=60 + 25 + 5, what="the minute in the database")
    stored_at = time.time()
    assert rows(gw) == [("boiler", minute, 42.5, 42.5, 42.5)]
    assert minute + 60 <= stored_at <= minute + 60 + 25


async def test_split_mode_the_mqtt_process_writes_and_the_web_process_shows(
    gateway_factory: GatewayFactory, mosquitto: Service, redis_server: Service
) -> None:
    web, mqtt_only = split_pair(gateway_factory, mosquitto.port, f"redis://127.0.0.1:{redis_server.port}/0")
    await until(lambda: "ready in" in mqtt_only.log, what="the MQTT process")
    minute = await at_a_minute_start()
    for value in (64.0, 90.25, 75.0):
        await publish(mosquitto.port, "sensors/boiler", f'{{"temp": {{"water": {value}}}}}')

    def last_shown() -> Any:
        status, body = history(web, "boiler")
        return (
            body["points"]
            if status == 200 and body["points"] and body["points"][-1]["last"] == 75.0
            else None
        )

    # The web process shows the minute from the MQTT process's sensor events (at most one per
    # 0.5 s, the last always: the earlier readings may not be among them)...
    (shown,) = await until(last_shown, what="the current minute in the web process")
    assert shown["t"] == iso_minute(minute) and shown["last"] == 75.0
    assert 64.0 <= shown["min"] <= shown["max"] <= 90.25
    assert rows(web) == []
    # ... and the MQTT process, which received every reading, writes the minute whole.
    assert mqtt_only.stop() == 0
    assert rows(web) == [("boiler", minute, 64.0, 90.25, 75.0)]
    assert history(web, "boiler") == (
        200,
        {"points": [{"t": iso_minute(minute), "min": 64.0, "max": 90.25, "last": 75.0}]},
    )
