"""Telegram end to end: the gateway as a real process, real aiogram in it, the Bot API stand-in over HTTP.

Users are played by the stand-in (`user_says`, `press_button`); what they would
see is what the stand-in recorded the bot sending.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import (
    ROOT,
    GatewayFactory,
    GatewayProcess,
    alert_event,
    http_get,
    publish,
    recv_json,
    recv_until,
    until,
    ws_connect,
)
from tests.telegram_standin import BotApiStandin

TOKEN = "123456:TEST-token-for-the-gateway-tests_0123"
ALICE, BOB, STRANGER, GROUP = 1001, 1002, 2002, -1003
DOOR = "zigbee2mqtt/front_door"


@pytest.fixture
async def standin() -> AsyncIterator[BotApiStandin]:
    async with BotApiStandin(token=TOKEN) as api:
        yield api


def telegram_toml(api: BotApiStandin, allowed: list[int], **keys: str) -> str:
    lines = [
        "",
        "[telegram]",
        f'token = "{TOKEN}"',
        f'api_url = "{api.base_url}"',
        f"allowed_chats = {json.dumps(allowed)}",
    ]
    lines += [f'{key} = "{value}"' for key, value in keys.items()]
    return "\n".join(lines) + "\n"


async def start(gw: GatewayProcess, protocols: tuple[str, ...] = ()) -> None:
    """Start and wait for /healthz 200 (Telegram included) off the loop: the stand-in lives on it."""
    gw.start(protocols, wait=False)
    if not protocols or "web" in protocols:
        await asyncio.to_thread(gw.wait_healthy, 45.0)


async def stop(gw: GatewayProcess) -> int:
    return await asyncio.to_thread(gw.stop)


async def make(
    gateway_factory: GatewayFactory, api: BotApiStandin, allowed: list[int], **kwargs: Any
) -> GatewayProcess:
    gw = gateway_factory(start=False, extra=telegram_toml(api, allowed), **kwargs)
    await start(gw)
    return gw


def to_chat(api: BotApiStandin, chat: int, method: str = "sendMessage") -> list[dict[str, Any]]:
    return [m for m in api.sent if m["chat_id"] == chat and m["method"] == method]


async def say(api: BotApiStandin, chat: int, text: str, **kwargs: Any) -> str:
    """What the bot answers to `text` in `chat`."""
    before = len(to_chat(api, chat))
    api.user_says(chat, text, **kwargs)
    sent = await api.wait_sent(before + 1, timeout=15, method="sendMessage", chat_id=chat)
    return str(sent[-1]["text"])


def buttons(message: dict[str, Any]) -> list[str]:
    markup = message.get("reply_markup") or {}
    return [b["callback_data"] for row in markup.get("inline_keyboard", []) for b in row]


async def test_commands_subscribe_unsubscribe_and_refusal(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await make(gateway_factory, standin, [ALICE, GROUP])
    assert gw.wait_healthy()["protocols"]["telegram"]["up"] is True
    assert [c["command"] for c in standin.commands or []] == [
        "start",
        "help",
        "subscribe",
        "unsubscribe",
        "status",
        "ack",
        "mute",
        "unmute",
        "silences",
        "mode",
    ]

    answer = await say(standin, STRANGER, "/start")
    assert "2002" in answer and "not allowed" in answer
    for command in ("/subscribe", "/status", "/ack abc234"):
        answer = await say(standin, STRANGER, command)
        assert "not allowed" in answer and "2002" in answer, command

    assert "is allowed" in await say(standin, ALICE, "/start")
    assert "/subscribe" in await say(standin, ALICE, "/help")
    assert "every zone" in await say(standin, ALICE, "/subscribe")
    assert "Already subscribed" in await say(standin, ALICE, "/subscribe")
    answer = await say(standin, ALICE, "/subscribe attic")
    assert "Unknown zone or group 'attic'" in answer and "house" in answer
    assert "zone house" in await say(standin, GROUP, "/subscribe@gateway_test_bot house", username="carol")

    status = await say(standin, ALICE, "/status")
    assert "0 open alerts" in status and "Front door (house)" in status
    assert "subscribed to: alerts." in status

    answer = await say(standin, ALICE, "/unsubscribe")
    assert "Unsubscribed from alerts" in answer and "No more alerts" in answer
    assert "no such subscription" in await say(standin, ALICE, "/unsubscribe")
    assert "Unknown command /frobnicate" in await say(standin, ALICE, "/frobnicate")
    assert TOKEN not in gw.log


async def test_trigger_to_telegram_and_button_ack_reaches_websocket(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await make(gateway_factory, standin, [ALICE, GROUP])
    await say(standin, ALICE, "/subscribe")
    await say(standin, GROUP, "/subscribe house", username="carol")
    ws = await ws_connect(gw)
    await recv_json(ws)  # hello

    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    raised = await recv_until(ws, alert_event("raised"))
    alert_id = raised["alert"]["id"]
    to_alice = await standin.wait_sent(2, method="sendMessage", chat_id=ALICE)
    message = to_alice[-1]
    assert "CRITICAL: Front door opened" in message["text"] and alert_id in message["text"]
    assert buttons(message) == [f"ack:{alert_id}", f"mute:{alert_id}"]
    group_message = (await standin.wait_sent(2, method="sendMessage", chat_id=GROUP))[-1]
    assert alert_id in group_message["text"]

    standin.press_button(ALICE, message["message_id"], f"ack:{alert_id}", username="alice")
    acked = await recv_until(ws, alert_event("acknowledged"), timeout=10)
    assert acked["alert"]["id"] == alert_id
    assert acked["alert"]["acknowledged_by"] == "telegram:@alice"
    # The button's answer may come a moment after the WebSocket has the event.
    answered = await standin.wait_answered(1)
    assert [c["text"] for c in answered] == [f"Acknowledged alert {alert_id}."]
    for chat, sent in ((ALICE, message), (GROUP, group_message)):
        edit = (await standin.wait_sent(1, method="editMessageText", chat_id=chat))[-1]
        assert edit["message_id"] == sent["message_id"]
        assert "Acknowledged by telegram:@alice at" in edit["text"]
        assert buttons(edit) == []  # nothing left to press

    # Pressing again (another phone) says who was first, and changes nothing.
    standin.press_button(ALICE, message["message_id"], f"ack:{alert_id}", username="bob")
    answers = [c["text"] for c in await standin.wait_answered(2)]
    assert "already acknowledged by telegram:@alice" in answers[-1]

    await publish(gw.mqtt_port, DOOR, '{"contact": true}')
    await recv_until(ws, alert_event("cleared"), timeout=10)
    edits = await standin.wait_sent(2, method="editMessageText", chat_id=ALICE)
    assert "Cleared at" in edits[-1]["text"] and "Acknowledged by telegram:@alice" in edits[-1]["text"]
    await ws.close()
    assert standin.violations == {"global": 0, "chat": 0, "group": 0}
    assert TOKEN not in gw.log


async def test_subscriptions_survive_restart_and_ack_command(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await make(gateway_factory, standin, [ALICE])
    await say(standin, ALICE, "/subscribe house")
    assert await stop(gw) == 0
    gw.start(wait=False)
    # MQTT and the web are up long before aiogram is loaded: raise the alert in between.
    await until(lambda: gw.log.count("ready in") == 2, what="ready")
    assert "polling as" not in gw.log.split("ready in")[-1]
    ws = await ws_connect(gw)
    await recv_json(ws)
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    alert_id = (await recv_until(ws, alert_event("raised")))["alert"]["id"]

    # Alice has not written since the restart; the alert reaches her all the same, once.
    message = (await standin.wait_sent(2, timeout=30, method="sendMessage", chat_id=ALICE))[-1]
    assert alert_id in message["text"]
    assert "1 subscribed chats ready" in gw.log and "catching up on 1 alert events" in gw.log

    # A user without a @username is named by id.
    answer = await say(standin, ALICE, f"/ack {alert_id.upper()}", username=None, user_id=5005)
    assert answer == f"Acknowledged alert {alert_id}."
    acked = await recv_until(ws, alert_event("acknowledged"), timeout=10)
    assert acked["alert"]["acknowledged_by"] == "telegram:5005"
    edit = (await standin.wait_sent(1, method="editMessageText", chat_id=ALICE))[-1]
    assert edit["message_id"] == message["message_id"] and "telegram:5005" in edit["text"]
    assert "already acknowledged by telegram:5005" in await say(standin, ALICE, f"/ack {alert_id}")
    assert "No alert with id 'zzzzzz'" in await say(standin, ALICE, "/ack zzzzzz")
    assert len([m for m in to_chat(standin, ALICE) if f"Alert id: {alert_id}" in m["text"]]) == 1
    await ws.close()


async def test_one_alert_to_sixty_chats_within_limits(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    chats = [3000 + i for i in range(55)] + [-4000 - i for i in range(5)]
    gw = await make(gateway_factory, standin, chats)
    for chat in chats:
        standin.user_says(chat, "/subscribe")
    await standin.wait_sent(60, timeout=20, method="sendMessage")

    started = time.monotonic()
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    await standin.wait_sent(120, timeout=20, method="sendMessage")
    alerts = [m for m in standin.sent if "Front door opened" in m["text"]]
    elapsed = max(m["at"] for m in alerts) - started
    assert sorted(m["chat_id"] for m in alerts) == sorted(chats)  # each chat once
    assert standin.violations == {"global": 0, "chat": 0, "group": 0}
    # 60 messages at 30 per second: about two seconds, however the replies before were spread.
    assert elapsed < 5.0, elapsed
    print(f"one alert to 60 chats in {elapsed:.2f}s")


async def test_three_429s_then_exactly_one_delivery(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await make(gateway_factory, standin, [ALICE])
    await say(standin, ALICE, "/subscribe")
    standin.fail("sendMessage", 429, count=3, retry_after=1, chat_id=ALICE)
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    await standin.wait_sent(2, timeout=20, method="sendMessage", chat_id=ALICE)

    attempts = [c for c in standin.calls if c["method"] == "sendMessage" and c["params"]["chat_id"] == ALICE]
    refused = [c for c in attempts if c["status"] == 429]
    assert len(refused) == 3
    delivered = [m for m in to_chat(standin, ALICE) if "Front door opened" in m["text"]]
    assert len(delivered) == 1
    # Each retry waited retry_after.
    times = [c["at"] for c in attempts[-4:]]
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(times)), times
    assert "Telegram asks to slow down (429)" in gw.log

    # A Bot API that answers 502 twice: backed off, retried, delivered once.
    standin.fail("sendMessage", 502, count=2, chat_id=ALICE)
    await publish(gw.mqtt_port, "sensors/boiler", '{"temp": {"water": 95}}')
    await standin.wait_sent(3, timeout=20, method="sendMessage", chat_id=ALICE)
    assert len([m for m in to_chat(standin, ALICE) if "Boiler at 95" in m["text"]]) == 1
    _, metrics = await asyncio.to_thread(http_get, f"{gw.url}/metrics")
    assert 'gateway_deliveries_total{outcome="retried",protocol="telegram"} 5.0' in metrics
    assert "retrying in" in gw.log


async def test_blocked_chat_loses_its_subscriptions(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await make(gateway_factory, standin, [ALICE, BOB])
    await say(standin, ALICE, "/subscribe")
    await say(standin, BOB, "/subscribe")
    standin.fail("sendMessage", 403, chat_id=BOB)
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    await standin.wait_sent(2, method="sendMessage", chat_id=ALICE)
    await until(lambda: "chat 1002 can no longer be reached" in gw.log, what="chat-gone log line")

    await publish(gw.mqtt_port, "sensors/boiler", '{"temp": {"water": 91}}')
    second = (await standin.wait_sent(3, method="sendMessage", chat_id=ALICE))[-1]
    assert "Boiler at 91" in second["text"]
    # Bob unblocked the bot and asks: he is no longer subscribed, and got no boiler alert.
    assert "subscribed to: nothing" in await say(standin, BOB, "/status")
    to_bob = [c["params"]["text"] for c in standin.calls if c["params"].get("chat_id") == BOB]
    assert not [text for text in to_bob if "WARNING: Boiler at 91" in text]
    assert "every zone" in await say(standin, BOB, "/subscribe")


async def test_webhook_mode(gateway_factory: GatewayFactory, standin: BotApiStandin) -> None:
    secret = "webhook-secret-0123456789"
    gw = gateway_factory(start=False)
    public_url = f"http://127.0.0.1:{gw.http_port}"
    extra = telegram_toml(standin, [ALICE], mode="webhook", webhook_url=public_url, webhook_secret=secret)
    gw.config_path.write_text(gw.config_path.read_text() + extra)
    await start(gw)
    assert gw.wait_healthy()["protocols"]["telegram"] == {
        "up": True,
        "since": pytest.approx(time.time(), abs=60),
        "detail": "webhook",
    }
    hook = standin.webhook or {}
    assert hook["secret_token"] == secret
    assert re.fullmatch(rf"http://127\.0\.0\.1:{gw.http_port}/telegram/[0-9a-f]{{32}}/", hook["url"])
    assert not [c for c in standin.calls if c["method"] == "getUpdates"]

    assert "is allowed" in await say(standin, ALICE, "/start")
    assert [d["status"] for d in standin.webhook_deliveries] == [200]

    def post(url: str, token: str, update: Any = None) -> int:
        body = json.dumps(update or {"update_id": 99, "message": {"text": "/start"}}).encode()
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("X-Telegram-Bot-Api-Secret-Token", token)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return err.code

    assert await asyncio.to_thread(post, hook["url"], "wrong-secret") == 403
    assert await asyncio.to_thread(post, f"{gw.url}/telegram/{'0' * 32}/", secret) == 403
    assert "refused a webhook call without the right secret" in gw.log

    # With the secret, but no update: refused (400), and the chat is not answered.
    before = len(to_chat(standin, ALICE))
    message = {**standin.updates[-1]["message"], "text": "/help"}
    for number in (True, -1, "7", None):
        forged = {"update_id": number, "message": message}
        assert await asyncio.to_thread(post, hook["url"], secret, forged) == 400
    assert "webhook: the body is not a JSON update (not an object with an update_id from 0 up)" in gw.log
    assert "0 open alerts" in await say(standin, ALICE, "/status")
    assert len(to_chat(standin, ALICE)) == before + 1


async def test_poller_failover_between_two_processes(
    gateway_factory: GatewayFactory, standin: BotApiStandin, redis_server: Any
) -> None:
    import psycopg

    name = f"gw_failover_{int(time.time() * 1000)}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        common = {
            "layer": f"redis://127.0.0.1:{redis_server.port}/0",
            "database": f"postgres://postgres@127.0.0.1:5432/{name}",
            "start": False,
            "extra": telegram_toml(standin, [ALICE]),
        }
        first = gateway_factory(name="first", **common)
        second = gateway_factory(name="second", **common)
        first.start(("telegram",), wait=False)
        await standin.wait_call("getUpdates", timeout=30)
        second.start(("telegram",), wait=False)
        await until(lambda: "standing by" in second.log, timeout=30, what="standby")
        assert "polling as @gateway_test_bot" in first.log

        assert "every zone" in await say(standin, ALICE, "/subscribe")
        first.kill()  # kill -9: no release, the lease has to expire
        killed = time.monotonic()
        answer = await say(standin, ALICE, "/status")
        took_over = time.monotonic() - killed
        assert "subscribed to: alerts." in answer  # from the database both share
        assert "now runs the Telegram bot" in second.log
        assert took_over < 15, took_over
        assert standin.conflicts == 0
        print(f"poller failover in {took_over:.1f}s")
        assert await stop(second) == 0
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_token_never_in_logs_errors_or_health(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    # The stand-in knows another token: every call of the gateway is refused with 401.
    async with BotApiStandin(token="999:ANOTHER-token-that-is-not-ours-xyz") as other:
        gw = gateway_factory(start=False, extra=telegram_toml(other, [ALICE]))
        gw.start(wait=False)
        # "(401)", not "401": a port of the log's "listening on" line may hold those digits.
        await until(lambda: "(401)" in gw.log, timeout=40, what="401 in the log")
        status, health = await asyncio.to_thread(http_get, f"{gw.url}/healthz")
        assert status == 503 and health["protocols"]["telegram"]["up"] is False
        assert "token was refused" in health["protocols"]["telegram"]["detail"]
        check = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "check", "--config", str(gw.config_path)],
            capture_output=True,
            text=True,
            cwd=gw.workdir,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            timeout=60,
        )
        assert check.returncode != 0 and "telegram" in check.stdout
        await stop(gw)
    for text in (gw.log, json.dumps(health), check.stdout, check.stderr):
        assert TOKEN not in text and TOKEN.split(":")[1] not in text


async def test_a_flooding_chat_is_throttled_and_odd_updates_are_ignored(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await make(gateway_factory, standin, [ALICE, BOB])
    for _ in range(40):  # a script hammering the bot
        standin.user_says(BOB, "/status")
    standin.user_says(BOB, "/start " + "x" * 10_000)  # longer than Telegram allows: not from Telegram
    standin._enqueue({"edited_message": {"text": "/status", "chat": {"id": ALICE, "type": "private"}}})
    standin._enqueue({"message": {"message_id": "not a number", "text": "/help", "chat": {"id": ALICE}}})
    # Another chat is answered at once, whatever the flood.
    assert "0 open alerts" in await say(standin, ALICE, "/status")
    await until(lambda: "chat 1002 sends too fast" in gw.log, what="the throttle")
    status, text = http_get(gw.url + "/metrics")
    assert status == 200
    counts = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_telegram_updates_total{")
    }
    # The burst of 8 gets through (answered one a second, as Telegram allows), the rest is dropped.
    assert 30 <= counts["update_throttled"] <= 32, counts
    assert counts["update_malformed"] == 1 and counts["update_ignored"] >= 2, counts
    assert "ignored a malformed update" in gw.log
    assert gw.wait_healthy()["protocols"]["telegram"]["up"] is True


async def test_an_alert_raised_while_the_api_is_down_survives_a_restart_and_arrives_once(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await make(gateway_factory, standin, [ALICE])
    await say(standin, ALICE, "/subscribe")
    standin.fail("sendMessage", 502, count=1000, chat_id=ALICE)  # Telegram is down for Alice's sends
    ws = await ws_connect(gw)
    await recv_json(ws)
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    alert_id = (await recv_until(ws, alert_event("raised")))["alert"]["id"]
    await ws.close()
    await until(lambda: 'outcome="retried"' in http_get(gw.url + "/metrics")[1], what="a retry")
    assert await stop(gw) == 0  # the queue is in memory: what is owed comes back from the event log
    standin._faults.clear()  # Telegram is back
    await start(gw)
    sent = await standin.wait_sent(2, timeout=30, method="sendMessage", chat_id=ALICE)
    assert alert_id in sent[-1]["text"]
    # Once: a later alert goes out, and the first one has not come again.
    await publish(gw.mqtt_port, DOOR, '{"contact": true}')
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    await standin.wait_sent(3, timeout=30, method="sendMessage", chat_id=ALICE)
    texts = [m["text"] for m in to_chat(standin, ALICE)]
    assert sum(f"Alert id: {alert_id}" in t for t in texts) == 1, texts
