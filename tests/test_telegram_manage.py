"""Alert management from Telegram (SPEC §10): /mute, /unmute, /silences, /mode, the Mute 1h
button, escalation messages and the announcements of changes.

The gateway runs as a real process with real aiogram in it, against the Bot API stand-in
over HTTP, with real MQTT; what a user would see is what the stand-in recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import (
    GatewayFactory,
    GatewayProcess,
    alert_event,
    http_get,
    metric,
    publish,
    recv_json,
    recv_until,
    until,
    ws_connect,
)
from tests.telegram_standin import BotApiStandin
from tests.test_telegram import (
    ALICE,
    BOB,
    DOOR,
    GROUP,
    STRANGER,
    TOKEN,
    buttons,
    say,
    start,
    stop,
    telegram_toml,
    to_chat,
)

CAROL = 1004
BOILER = "sensors/boiler"
LEAK = "sensors/leak"
OPS = "ops-secret-token"

MODES = 'modes = ["home", "away", "night"]\nmode = "home"\n'
# A leak escalates to the on-call chats after a second, then to the boss after four.
LEAK_RULE = """
[[sensors]]
id = "leak"
name = "Leak sensor"
zone = "laundry"
topic = "sensors/leak"
format = "json"
field = "wet"

[[rules]]
id = "leak"
sensor = "leak"
when = { equals = true }
clear = { equals = false }
severity = "critical"
message = "Water leak"
escalate = [{ after = "1s", notify = ["alerts.oncall"] }, { after = "4s", notify = ["alerts.boss"] }]
"""


@pytest.fixture
async def standin() -> AsyncIterator[BotApiStandin]:
    async with BotApiStandin(token=TOKEN) as api:
        yield api


async def gateway(
    gateway_factory: GatewayFactory, api: BotApiStandin, allowed: list[int], modes: bool = True
) -> GatewayProcess:
    gw = gateway_factory(start=False, extra=telegram_toml(api, allowed) + LEAK_RULE)
    if modes:
        text = gw.config_path.read_text()
        gw.config_path.write_text(text.replace("[gateway]\n", "[gateway]\n" + MODES, 1))
    await start(gw)
    return gw


def texts(api: BotApiStandin, chat: int, *parts: str) -> list[str]:
    """The texts of the messages sent to `chat` that contain every one of `parts`."""
    return [m["text"] for m in to_chat(api, chat) if all(p in m["text"] for p in parts)]


async def message_about(api: BotApiStandin, chat: int, *parts: str, timeout: float = 15) -> dict[str, Any]:
    """The first message to `chat` containing every one of `parts`, once it is there."""

    def found() -> list[dict[str, Any]]:
        return [m for m in to_chat(api, chat) if all(p in m["text"] for p in parts)]

    deadline = time.monotonic() + timeout
    while not found():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"no message with {parts} to {chat}; got {[m['text'] for m in to_chat(api, chat)]}"
            )
        await api.wait_sent(len(api.sent) + 1, timeout=left)
    return found()[0]


async def test_mute_zone_holds_telegram_and_unmute_sends_the_held_alert(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await gateway(gateway_factory, standin, [ALICE, GROUP])
    await say(standin, ALICE, "/subscribe")
    await say(standin, GROUP, "/subscribe", username="carol")
    ws = await ws_connect(gw)
    await recv_json(ws)  # hello

    answer = await say(standin, ALICE, "/mute house 2h painting the hall")
    assert answer.startswith("🔕 Muted zone house for 2h, until ") and " UTC. Silence id " in answer
    silence_id = answer.rsplit("/unmute ", 1)[1].rstrip(")")
    # The group (on every zone) is told; Alice, who made it, only got her answer.
    told = await message_about(standin, GROUP, "telegram:@alice muted zone house for 2h")
    assert silence_id in told["text"] and "painting the hall" in told["text"]

    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    raised = await recv_until(ws, alert_event("raised"))
    door_id = raised["alert"]["id"]
    assert raised["alert"]["silenced"] == silence_id
    status, body = http_get(f"{gw.url}/api/alerts?state=active", OPS)
    assert status == 200 and [a["silenced"] for a in body["alerts"]] == [silence_id]
    # An alert in another zone after it goes out; the door's, held, never came before it.
    await publish(gw.mqtt_port, BOILER, '{"temp": {"water": 91}}')
    boiler_id = (await recv_until(ws, alert_event("raised")))["alert"]["id"]
    for chat in (ALICE, GROUP):
        boiler = await message_about(standin, chat, boiler_id)
        assert "WARNING: Boiler at 91" in boiler["text"]
        assert buttons(boiler) == [f"ack:{boiler_id}", f"mute:{boiler_id}"]
        assert texts(standin, chat, door_id) == []
    assert texts(standin, ALICE, "muted zone") == []

    listed = await say(standin, ALICE, "/silences")
    assert "1 active silence:" in listed
    assert (
        f"🔕 {silence_id}: zone house, until " in listed and "by telegram:@alice: painting the hall" in listed
    )

    answer = await say(standin, ALICE, "/unmute house")
    assert answer == f"🔔 Unmuted: {silence_id} (zone house)."
    # The held door alert is sent now, as if raised now, to both chats, once.
    for chat in (ALICE, GROUP):
        door = await message_about(standin, chat, door_id)
        assert door["text"].startswith("🔔 No longer muted, still active. 🔴 CRITICAL: Front door opened")
        assert buttons(door) == [f"ack:{door_id}", f"mute:{door_id}"]
    assert await message_about(standin, GROUP, f"Silence {silence_id} over zone house was removed")
    status, body = http_get(f"{gw.url}/api/alerts?state=active", OPS)
    assert {a["id"]: a["silenced"] for a in body["alerts"]} == {door_id: None, boiler_id: None}
    assert "No active silences." == await say(standin, ALICE, "/silences")
    assert "No active silence for 'house'" in await say(standin, ALICE, "/unmute house")

    # Acknowledging edits the message that was sent on unmute.
    assert len(texts(standin, ALICE, door_id)) == 1
    await say(standin, ALICE, f"/ack {door_id}")
    edit = (await standin.wait_sent(1, method="editMessageText", chat_id=ALICE))[-1]
    assert edit["message_id"] == (await message_about(standin, ALICE, door_id))["message_id"]
    assert "Acknowledged by telegram:@alice" in edit["text"] and buttons(edit) == []
    await ws.close()
    assert standin.violations == {"global": 0, "chat": 0, "group": 0}


async def test_mute_button_and_bad_mute_requests(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await gateway(gateway_factory, standin, [ALICE, GROUP])
    await say(standin, ALICE, "/subscribe house")
    await say(standin, GROUP, "/subscribe", username="carol")
    ws = await ws_connect(gw)
    await recv_json(ws)

    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    door_id = (await recv_until(ws, alert_event("raised")))["alert"]["id"]
    message = await message_about(standin, ALICE, door_id)
    standin.press_button(ALICE, message["message_id"], f"mute:{door_id}", username="alice")
    answer = (await standin.wait_answered(1))[-1]["text"]
    assert answer.startswith("🔕 Muted sensor front-door, rule door-opened for 1h, until ")

    _, body = http_get(f"{gw.url}/api/alerts?state=active", OPS)
    [silenced] = [a["silenced"] for a in body["alerts"]]
    assert silenced and f"Silence id {silenced} (/unmute {silenced})" in answer
    told = await message_about(standin, GROUP, "telegram:@alice muted sensor front-door, rule door-opened")
    assert "for 1h" in told["text"] and silenced in told["text"]
    listed = await say(standin, ALICE, "/silences")
    assert f"🔕 {silenced}: sensor front-door, rule door-opened, until " in listed
    assert "by telegram:@alice" in listed

    # /mute <alert id> silences the same: its rule on its sensor.
    answer = await say(standin, ALICE, f"/mute {door_id} 30m")
    assert answer.startswith("🔕 Muted sensor front-door, rule door-opened for 30m, until ")

    usage = "Usage: /mute <sensor|zone|alert id> <duration> [comment]"
    bad_before = metric(gw, 'gateway_bad_input_total{protocol="telegram",reason="mute"}')
    for request, error in (
        ("/mute", ""),
        ("/mute house", ""),
        ("/mute attic 2h", "No sensor, zone or open alert 'attic'."),
        ("/mute house forever", "For: 'forever' is not a duration"),
        ("/mute house 30d", "For: must be more than 0 and at most 7d."),
    ):
        answer = await say(standin, ALICE, request)
        assert error in answer and usage in answer, (request, answer)
    assert metric(gw, 'gateway_bad_input_total{protocol="telegram",reason="mute"}') == bad_before + 5
    assert "No active silence for 'cellar'" in await say(standin, ALICE, "/unmute cellar")
    assert "Usage: /unmute" in await say(standin, ALICE, "/unmute")
    for command in ("/mute house 2h", "/unmute house", "/silences", "/mode away"):
        answer = await say(standin, STRANGER, command)
        assert "not allowed" in answer and "2002" in answer, command
    assert "2 active silences:" in await say(standin, ALICE, "/silences")  # the stranger changed nothing

    # /unmute <sensor> ends both silences over the front door.
    answer = await say(standin, ALICE, "/unmute front-door")
    assert answer.startswith("🔔 Unmuted: ") and answer.count("sensor front-door, rule door-opened") == 2
    back = await message_about(standin, ALICE, "No longer muted", door_id)
    assert buttons(back) == [f"ack:{door_id}", f"mute:{door_id}"]
    assert "/mute" in await say(standin, ALICE, "/help") and "/mode" in await say(standin, ALICE, "/help")
    await ws.close()


async def test_mode_shown_set_and_refused(gateway_factory: GatewayFactory, standin: BotApiStandin) -> None:
    gw = await gateway(gateway_factory, standin, [ALICE, GROUP])
    await say(standin, GROUP, "/subscribe", username="carol")
    answer = await say(standin, ALICE, "/mode")
    assert answer.startswith("Mode: home.") and "Modes: home, away, night." in answer
    assert "Usage: /mode [home|away|night]" in answer

    assert await say(standin, ALICE, "/mode away") == "🛡 Mode is now away."
    told = await message_about(standin, GROUP, "Mode is now away")
    assert told["text"] == "🛡 Mode is now away (set by telegram:@alice)."
    answer = await say(standin, ALICE, "/mode")
    assert answer.startswith("Mode: away, set by telegram:@alice at ")

    answer = await say(standin, ALICE, "/mode disco")
    assert answer == "Unknown mode 'disco' (known: home, away, night).\nUsage: /mode [home|away|night]"
    assert (await say(standin, ALICE, "/mode")).startswith("Mode: away, set by telegram:@alice at ")
    assert metric(gw, 'gateway_bad_input_total{protocol="telegram",reason="mode"}') == 1


async def test_escalation_reaches_the_oncall_chat_only_and_stops_on_ack(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await gateway(gateway_factory, standin, [ALICE, BOB, CAROL], modes=False)
    assert "Modes are off" in await say(standin, ALICE, "/mode")
    answer = await say(standin, ALICE, "/subscribe attic")
    assert "Unknown zone or group 'attic'" in answer and "Groups: oncall, boss." in answer
    assert "every zone" in await say(standin, ALICE, "/subscribe")
    assert "group oncall" in await say(standin, BOB, "/subscribe oncall", username="bob")
    assert "Already subscribed" in await say(standin, BOB, "/subscribe alerts.oncall", username="bob")
    assert "group boss" in await say(standin, CAROL, "/subscribe boss", username="carol")
    ws = await ws_connect(gw)
    await recv_json(ws)

    await publish(gw.mqtt_port, LEAK, '{"wet": true}')
    raised = (await recv_until(ws, alert_event("raised")))["alert"]
    leak_id = raised["id"]
    assert "CRITICAL: Water leak" in (await message_about(standin, ALICE, leak_id))["text"]
    to_bob = await message_about(standin, BOB, leak_id)
    assert to_bob["text"].startswith("⏫ Escalated (level 1): 🔴 CRITICAL: Water leak")
    assert buttons(to_bob) == [f"ack:{leak_id}", f"mute:{leak_id}"]

    standin.press_button(BOB, to_bob["message_id"], f"ack:{leak_id}", username="bob")
    acked = await recv_until(ws, alert_event("acknowledged"))
    assert acked["alert"]["acknowledged_by"] == "telegram:@bob"
    # Both messages are edited: Alice's of the raise, Bob's of the escalation.
    for chat, sent in ((ALICE, await message_about(standin, ALICE, leak_id)), (BOB, to_bob)):
        edit = (await standin.wait_sent(1, method="editMessageText", chat_id=chat))[-1]
        assert edit["message_id"] == sent["message_id"]
        assert "Acknowledged by telegram:@bob" in edit["text"] and buttons(edit) == []

    # Level 2 (4 s after the raise) does not fire once acknowledged: wait past it, then look.
    raised_at = datetime.fromisoformat(raised["raised_at"].replace("Z", "+00:00")).timestamp()
    await asyncio.sleep(max(0.0, raised_at + 4.5 - time.time()))
    await publish(gw.mqtt_port, LEAK, '{"wet": false}')
    await recv_until(ws, alert_event("cleared"))
    edits = await standin.wait_sent(2, method="editMessageText", chat_id=BOB)
    assert "Cleared at" in edits[-1]["text"]
    assert [m["text"] for m in to_chat(standin, CAROL)] == [
        "Subscribed: this chat gets the alerts of group boss."
    ]
    assert texts(standin, ALICE, "Escalated") == [] and len(texts(standin, BOB, leak_id)) == 1
    _, body = http_get(f"{gw.url}/api/alerts?state=cleared", OPS)
    assert [a["escalation"] for a in body["alerts"]] == [1]
    await ws.close()


async def test_catch_up_after_a_restart_skips_silenced_raises(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await gateway(gateway_factory, standin, [ALICE])
    await say(standin, ALICE, "/subscribe")
    silence_id = (await say(standin, ALICE, "/mute house 1h")).rsplit("/unmute ", 1)[1].rstrip(")")
    assert await stop(gw) == 0
    gw.start(wait=False)
    # MQTT and the web are up long before aiogram is loaded: raise both alerts in between.
    await until(lambda: gw.log.count("ready in") == 2, what="ready")
    assert "polling as" not in gw.log.split("ready in")[-1]
    ws = await ws_connect(gw)
    await recv_json(ws)
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    door = (await recv_until(ws, alert_event("raised")))["alert"]
    assert door["silenced"] == silence_id  # the silence survived the restart
    await publish(gw.mqtt_port, BOILER, '{"temp": {"water": 91}}')
    boiler_id = (await recv_until(ws, alert_event("raised")))["alert"]["id"]

    # The chat catches up on both events: the boiler's is sent, the silenced door's is not.
    assert "WARNING: Boiler at 91" in (await message_about(standin, ALICE, boiler_id, timeout=30))["text"]
    assert "catching up on 2 alert events" in gw.log
    assert texts(standin, ALICE, door["id"]) == []
    assert "/unmute" in await say(standin, ALICE, "/silences")
    await say(standin, ALICE, f"/unmute {silence_id}")
    back = await message_about(standin, ALICE, "No longer muted", door["id"])
    assert len(texts(standin, ALICE, door["id"])) == 1 and back["text"].count("Front door opened") == 1
    await ws.close()
