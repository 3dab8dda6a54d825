"""Telegram against what strangers, reloads, a refused token, an upstream error page and a group upgrade do.

The gateway runs as a real process with real aiogram in it, against the Bot API
stand-in over HTTP; what a user would see is what the stand-in recorded.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import (
    ROOT,
    GatewayFactory,
    GatewayProcess,
    http_get,
    metric,
    publish,
    until,
)
from tests.telegram_standin import BotApiStandin
from tests.test_telegram import (
    ALICE,
    BOB,
    DOOR,
    GROUP,
    TOKEN,
    make,
    say,
    start,
    stop,
    telegram_toml,
    to_chat,
)

SECRET = TOKEN.partition(":")[2]
CAROL = 1004
SUPERGROUP = -1001003


@pytest.fixture
async def standin() -> AsyncIterator[BotApiStandin]:
    async with BotApiStandin(token=TOKEN) as api:
        yield api


def alerts_to(api: BotApiStandin, chat: int, text: str = "Front door opened") -> list[str]:
    return [m["text"] for m in to_chat(api, chat) if text in m["text"]]


async def reload(gw: GatewayProcess, allowed: list[int]) -> None:
    text = gw.config_path.read_text()
    gw.config_path.write_text(re.sub(r"allowed_chats = \[.*\]", f"allowed_chats = {allowed}", text))
    before = gw.log.count("config reloaded")
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    await until(lambda: gw.log.count("config reloaded") > before, what="the reload")


def rss_kib(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    status = Path(f"/proc/{gw.proc.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1])  # type: ignore[index]


async def test_strangers_flooding_the_bot_cannot_starve_an_alert(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await make(gateway_factory, standin, [ALICE])
    await say(standin, ALICE, "/subscribe")
    # 260 groups that are not allowed, each sending a burst of /start: 2,080 replies asked for at once.
    strangers = [-50_000 - i for i in range(260)]
    taken = 'gateway_telegram_updates_total{outcome="message"}'
    before = metric(gw, taken)
    for chat in strangers:
        for _ in range(8):
            standin.user_says(chat, "/start", username="mallory")
    await until(lambda: metric(gw, taken) >= before + len(strangers) * 8, timeout=30, what="the flood read")
    waiting = metric(gw, "gateway_telegram_queue ")

    published = time.monotonic()
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    await standin.wait_sent(2, timeout=20, method="sendMessage", chat_id=ALICE)
    took = time.monotonic() - published
    print(f"alert through a flood of {len(strangers) * 8} /start: {took:.2f}s, {waiting:.0f} queued")
    assert len(alerts_to(standin, ALICE)) == 1
    assert took < 5.0, took  # its chat's first free turn, not behind the strangers' replies
    # Replies are bounded per chat (4) and overall: room is left, and the drops say so once.
    assert waiting <= len(strangers) * 4 + 1, waiting
    assert gw.log.count("Telegram queue full") <= 1
    assert standin.violations == {"global": 0, "chat": 0, "group": 0}


async def test_an_alert_the_queue_has_no_room_for_is_sent_later(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    # Room for one alert at a time: the other chats' copies are refused, and owed.
    extra = telegram_toml(standin, [ALICE, BOB, CAROL]) + "max_queued_alerts = 1\n"
    gw = gateway_factory(start=False, extra=extra)
    await start(gw)
    for chat in (ALICE, BOB, CAROL):
        await say(standin, chat, "/subscribe")
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    for chat in (ALICE, BOB, CAROL):
        await standin.wait_sent(2, timeout=30, method="sendMessage", chat_id=chat)
    assert "an alert to chat" in gw.log and "kept to send later" in gw.log
    assert "sending the alerts the Telegram queue had no room for" in gw.log

    await publish(gw.mqtt_port, DOOR, '{"contact": true}')
    for chat in (ALICE, BOB, CAROL):
        edit = (await standin.wait_sent(1, timeout=30, method="editMessageText", chat_id=chat))[-1]
        assert "Cleared at" in edit["text"]
    for chat in (ALICE, BOB, CAROL):
        assert len(alerts_to(standin, chat)) == 1, chat  # each chat once


async def test_a_chat_taken_off_allowed_chats_by_a_reload_gets_no_more_alerts(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await make(gateway_factory, standin, [ALICE, BOB])
    await say(standin, ALICE, "/subscribe")
    await say(standin, BOB, "/subscribe")
    await reload(gw, [ALICE])

    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    await standin.wait_sent(2, method="sendMessage", chat_id=ALICE)
    await publish(gw.mqtt_port, "sensors/boiler", '{"temp": {"water": 95}}')
    await standin.wait_sent(3, method="sendMessage", chat_id=ALICE)  # Bob's would have come by now
    assert alerts_to(standin, BOB) == [] and alerts_to(standin, BOB, "Boiler at 95") == []
    assert "not allowed" in await say(standin, BOB, "/status")
    assert "chat 1002 is no longer in telegram.allowed_chats: removed its subscriptions alerts" in gw.log

    # Listed again, he subscribes afresh: the next alert reaches him, and none from while he was off.
    await reload(gw, [ALICE, BOB])
    assert "every zone" in await say(standin, BOB, "/subscribe")
    await publish(gw.mqtt_port, DOOR, '{"contact": true}')
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    await until(lambda: alerts_to(standin, BOB), what="the alert to Bob")
    await until(lambda: len(alerts_to(standin, ALICE)) == 2, what="the second alert to Alice")
    assert len(alerts_to(standin, BOB)) == 1 and alerts_to(standin, BOB, "Boiler at 95") == []


async def test_strangers_leave_no_memory_behind_and_allowed_chats_are_always_answered(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await make(gateway_factory, standin, [ALICE, BOB])
    await say(standin, ALICE, "/start")
    taken = 'gateway_telegram_updates_total{outcome="message"}'

    async def strangers(first: int, n: int) -> None:
        before = metric(gw, taken)
        for chat in range(first, first + n):
            # Groups chatting where the bot is a member: no reply waits in the outbox to be counted.
            standin.user_says(-chat, "hello everyone", chat_type="group", username=None)
        await until(lambda: metric(gw, taken) >= before + n, timeout=30, what=f"{n} strangers read")

    n = 1500
    await strangers(3_000_000, n)  # the first ones raise the high-water mark once: not growth
    baseline = rss_kib(gw)
    await strangers(4_000_000, n)
    grown = rss_kib(gw) - baseline
    print(f"{n} more strangers: RSS {baseline} -> {baseline + grown} KiB (+{grown / 1024:.1f} MiB)")
    # Before: about 20 KiB per chat for good, an application instance each.
    assert grown < n * 2, grown
    assert "is allowed" in await say(standin, BOB, "/start")  # whatever strangers came before
    assert {m["chat_id"] for m in standin.sent} == {ALICE, BOB}  # chatter in groups gets no answer
    assert "ignored" not in gw.log


async def test_an_alert_raised_while_the_token_is_refused_arrives_when_it_works_again(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await make(gateway_factory, standin, [ALICE])
    await say(standin, ALICE, "/subscribe")
    standin.token = "123456:REVOKED-token-the-gateway-does-not-have"  # every call is 401 now
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')

    def refused() -> bool:
        return any(c["method"] == "sendMessage" and c["status"] == 401 for c in standin.calls)

    await until(refused, what="a send refused with 401")
    standin.token = TOKEN  # the operator fixed it at BotFather's end
    await standin.wait_sent(2, timeout=40, method="sendMessage", chat_id=ALICE)
    assert len(alerts_to(standin, ALICE)) == 1
    assert "Telegram refused" not in gw.log  # not given up


async def test_the_token_never_shows_percent_encoded_or_by_its_secret_half(
    gateway_factory: GatewayFactory, standin: BotApiStandin, tmp_path: Path
) -> None:
    gw = await make(gateway_factory, standin, [ALICE])
    await say(standin, ALICE, "/subscribe")
    # An upstream error page repeating the URL, `:` as %3A: on sends, and on the long poll.
    standin.fail("sendMessage", 502, count=2, chat_id=ALICE, echo_url=True)
    standin.fail("getUpdates", 502, count=1000, echo_url=True)
    standin.user_says(ALICE, "hello")  # ends the long poll in flight: the next one meets the fault

    def down() -> dict[str, object] | None:
        status, health = http_get(f"{gw.url}/healthz")
        return health if status == 503 and "requesting" in json.dumps(health) else None

    health = await until(down, timeout=30, what="/healthz repeating the error page")
    await until(lambda: re.search("requesting /bot.*/sendMessage", gw.log), what="the send's echo logged")
    standin._faults.clear()
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    await until(lambda: alerts_to(standin, ALICE), timeout=30, what="the alert")

    # `gateway check` with an api_url that urllib refuses, and one that answers with the echo.
    bad = tmp_path / "bad.toml"
    bad.write_text(gw.config_path.read_text().replace(standin.base_url, standin.base_url + "/a b"))
    standin.fail("getMe", 502, echo_url=True)
    checks = [
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "check", "--config", str(path)],
            capture_output=True,
            text=True,
            cwd=gw.workdir,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            timeout=60,
        )
        for path in (bad, gw.config_path)
    ]
    assert checks[0].returncode != 0 and "api_url" in checks[0].stdout + checks[0].stderr
    assert checks[1].returncode != 0 and "telegram  FAIL" in checks[1].stdout
    await stop(gw)
    texts = [gw.log, json.dumps(health)] + [c.stdout + c.stderr for c in checks]
    for text in texts:
        assert SECRET not in text and quote(TOKEN, safe="") not in text and TOKEN not in text


async def test_a_group_upgraded_to_a_supergroup_keeps_its_alerts(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await make(gateway_factory, standin, [ALICE, GROUP])
    await say(standin, GROUP, "/subscribe", username="carol")
    standin.migrate_chat(GROUP, SUPERGROUP)
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    await standin.wait_sent(1, timeout=20, method="sendMessage", chat_id=SUPERGROUP)
    assert len(alerts_to(standin, SUPERGROUP)) == 1
    await until(lambda: "put -1001003 in telegram.allowed_chats in place of -1003" in gw.log, what="the log")
    assert "chat -1003 was upgraded to the supergroup -1001003: its subscriptions (alerts)" in gw.log
    status = await say(standin, SUPERGROUP, "/status", username="carol")
    assert "subscribed to: alerts." in status and "not allowed" not in status

    # After a restart too: allowed as the group was, subscribed, and alerted without a word.
    assert await stop(gw) == 0
    await start(gw)
    await publish(gw.mqtt_port, "sensors/boiler", '{"temp": {"water": 95}}')
    await standin.wait_sent(3, timeout=30, method="sendMessage", chat_id=SUPERGROUP)
    assert len(alerts_to(standin, SUPERGROUP, "Boiler at 95")) == 1


async def test_an_unreadable_update_batch_is_logged_without_what_people_wrote(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await make(gateway_factory, standin, [ALICE])
    assert "commands only" in await say(standin, ALICE, "my door code is 4711")
    # Read as JSON (protocols.telegram.methods), field by field: its id is not a number.
    standin._enqueue({"message": {"message_id": "code 4711", "text": "/help 4711", "chat": {"id": ALICE}}})
    assert "0 open alerts" in await say(standin, ALICE, "/status")
    assert "ignored a malformed update" in gw.log and "message (ValueError;" in gw.log
    # A batch that is not a list of updates: aiogram refuses it, its updates are taken as JSON.
    standin.enqueue_garbage("my door code is 4711")
    standin.enqueue_garbage([4711])
    assert "0 open alerts" in await say(standin, ALICE, "/status")
    assert "aiogram could not read an update batch" in gw.log
    assert "4711" not in gw.log


async def test_a_batch_read_as_json_skips_updates_without_an_id_as_aiogram_reads_do(
    gateway_factory: GatewayFactory, standin: BotApiStandin
) -> None:
    gw = await make(gateway_factory, standin, [ALICE])
    assert "0 open alerts" in await say(standin, ALICE, "/status")
    message = {**standin.updates[-1]["message"], "text": "/help"}
    # `true` was taken for the id 1 (offset 2), and -1 asks Telegram for its last update again.
    # aiogram cannot read the batch; the gateway reads it again as JSON, and gets the same.
    standin.enqueue_garbage("not an update", batches=2)
    for number in (True, -1, 2.5):
        standin.enqueue_garbage({"update_id": number, "message": message}, batches=2)
    assert "0 open alerts" in await say(standin, ALICE, "/status")
    assert "aiogram could not read an update batch" in gw.log
    # The updates after the batch are taken, once each, and the three without an id never were:
    # the chat has three answers, to its three /status.
    assert "0 open alerts" in await say(standin, ALICE, "/status")
    answers = [m["text"] for m in to_chat(standin, ALICE)]
    assert len(answers) == 3 and all("0 open alerts" in text for text in answers)
