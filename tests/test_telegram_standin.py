"""The Telegram Bot API stand-in answers real aiogram 3 the way Telegram does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup
from aiohttp import web

from tests.telegram_standin import BotApiStandin


@pytest.fixture
async def standin() -> AsyncIterator[BotApiStandin]:
    async with BotApiStandin() as server:
        yield server


def make_bot(standin: BotApiStandin, token: str | None = None) -> Bot:
    api = TelegramAPIServer.from_base(standin.base_url)
    return Bot(token or standin.token, session=AiohttpSession(api=api))


@pytest.fixture
async def bot(standin: BotApiStandin) -> AsyncIterator[Bot]:
    bot = make_bot(standin)
    yield bot
    await bot.session.close()


def keyboard(*data: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text=d, callback_data=d) for d in data]]
    )


async def test_get_me_send_edit_commands_and_button(standin: BotApiStandin, bot: Bot) -> None:
    me = await bot.get_me()
    assert (me.id, me.username, me.is_bot) == (123456, "gateway_test_bot", True)

    msg = await bot.send_message(42, "alert: disk full", reply_markup=keyboard("ack"))
    assert msg.message_id == 1 and msg.chat.id == 42 and msg.from_user and msg.from_user.id == me.id
    assert msg.reply_markup is not None and msg.reply_markup.inline_keyboard[0][0].callback_data == "ack"
    [entry] = await standin.wait_sent(1, method="sendMessage", chat_id=42)
    assert entry["text"] == "alert: disk full" and entry["message_id"] == 1
    assert entry["reply_markup"] == {"inline_keyboard": [[{"text": "ack", "callback_data": "ack"}]]}

    edited = await bot.edit_message_text("alert: disk full (acked)", chat_id=42, message_id=1)
    assert isinstance(edited, type(msg)) and edited.text == "alert: disk full (acked)"
    assert edited.reply_markup is None  # like Telegram: an edit without markup removes the keyboard
    assert standin.sent[-1]["method"] == "editMessageText" and standin.sent[-1]["message_id"] == 1
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("alert: disk full (acked)", chat_id=42, message_id=1)
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("x", chat_id=42, message_id=99)
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(42, "x" * 4097)
    assert len(standin.sent) == 2
    assert (await bot.send_message(-1001, "group")).message_id == 1  # message ids count per chat

    await bot.set_my_commands([BotCommand(command="status", description="Show status")])
    assert standin.commands == [{"command": "status", "description": "Show status"}]

    second = await bot.send_message(42, "alert: cpu hot", reply_markup=keyboard("ack", "mute"))
    standin.press_button(42, second.message_id, "mute")
    [update] = await bot.get_updates(timeout=0)
    query = update.callback_query
    assert query is not None and query.data == "mute" and query.from_user.id == 42
    assert query.message is not None and query.message.message_id == second.message_id
    assert await bot.answer_callback_query(query.id, text="muted")
    assert standin.answered_callbacks == [{"callback_query_id": query.id, "text": "muted"}]


async def test_injected_faults_map_to_aiogram_exceptions(standin: BotApiStandin, bot: Bot) -> None:
    standin.fail("sendMessage", 429, retry_after=1)
    with pytest.raises(TelegramRetryAfter) as info:
        await bot.send_message(5, "hi")
    assert info.value.retry_after == 1
    assert standin.sent == []
    standin.fail("sendmessage", 403, chat_id=6)
    await bot.send_message(5, "not chat 6, not faulted")
    with pytest.raises(TelegramForbiddenError, match="blocked by the user"):
        await bot.send_message(6, "hi")
    standin.fail("sendMessage", 400)
    standin.fail("sendMessage", 502)
    standin.fail("getUpdates", 409)
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(5, "hi")
    with pytest.raises(TelegramServerError):
        await bot.send_message(5, "hi")
    with pytest.raises(TelegramConflictError):
        await bot.get_updates()
    assert [s["text"] for s in standin.sent] == ["not chat 6, not faulted"]
    assert [c["status"] for c in standin.calls] == [429, 200, 403, 400, 502, 409]

    intruder = make_bot(standin, token="999:wrong")
    try:
        with pytest.raises(TelegramUnauthorizedError):
            await intruder.get_me()
    finally:
        await intruder.session.close()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{standin.base_url}/bot{standin.token}/noSuchMethod") as resp:
            assert resp.status == 404
            assert await resp.json() == {"ok": False, "error_code": 404, "description": "Not Found"}


async def test_group_upgrade_and_an_error_page_repeating_the_url(standin: BotApiStandin, bot: Bot) -> None:
    standin.migrate_chat(-5, -1000005)
    with pytest.raises(TelegramMigrateToChat) as info:
        await bot.send_message(-5, "to the old group")
    assert info.value.migrate_to_chat_id == -1000005
    sent = await bot.send_message(-1000005, "to the supergroup")
    assert sent.chat.type == "supergroup"
    updates = await bot.get_updates()
    assert [
        (u.message.chat.id, u.message.migrate_to_chat_id, u.message.migrate_from_chat_id)
        for u in updates
        if u.message
    ] == [
        (-5, -1000005, None),
        (-1000005, None, -5),
    ]

    standin.fail("sendMessage", 502, echo_url=True)
    with pytest.raises(TelegramServerError) as error:
        await bot.send_message(5, "hi")
    assert f"/bot{standin.token.replace(':', '%3A')}/sendMessage" in error.value.message


async def test_long_poll_wakes_on_update_and_offset_confirms(standin: BotApiStandin, bot: Bot) -> None:
    async def user_speaks_later() -> None:
        await standin.wait_call("getUpdates")
        await asyncio.sleep(0.1)
        standin.user_says(42, "/start@gateway_test_bot now")

    started = time.monotonic()
    updates, _ = await asyncio.gather(bot.get_updates(timeout=5), user_speaks_later())
    assert time.monotonic() - started < 1.0
    [update] = updates
    assert update.update_id == 1 and update.message is not None
    assert update.message.text == "/start@gateway_test_bot now" and update.message.chat.type == "private"
    assert update.message.from_user is not None and update.message.from_user.username == "alice"
    [entity] = update.message.entities or []
    assert (entity.type, entity.offset, entity.length) == ("bot_command", 0, len("/start@gateway_test_bot"))

    standin.user_says(-100, "hello group", title="Ops")
    assert [u.update_id for u in await bot.get_updates(timeout=0)] == [1, 2]  # not confirmed yet
    [group] = await bot.get_updates(offset=2, timeout=0)
    assert group.message is not None and group.message.chat.title == "Ops"
    assert group.message.from_user is not None and group.message.from_user.id == 777
    assert await bot.get_updates(offset=3, timeout=0) == []
    assert await bot.get_updates(timeout=0) == []  # confirmed updates are gone for good
    started = time.monotonic()
    assert await bot.get_updates(timeout=1) == []  # nothing comes: the poll is held for the timeout
    assert 0.9 < time.monotonic() - started < 2.0


async def test_second_poller_gets_conflict(standin: BotApiStandin, bot: Bot) -> None:
    first = asyncio.create_task(bot.get_updates(timeout=5))
    await standin.wait_call("getUpdates")
    with pytest.raises(TelegramConflictError, match="terminated by other getUpdates request"):
        await bot.get_updates(timeout=5)
    assert standin.conflicts == 1
    standin.user_says(7, "still here")
    [update] = await asyncio.wait_for(first, 2)
    assert update.message is not None and update.message.text == "still here"


async def test_rate_limit_violations(standin: BotApiStandin, bot: Bot) -> None:
    await bot.send_message(5, "one")
    await bot.send_message(5, "two")
    await bot.send_message(6, "other chat")
    assert standin.violations == {"global": 0, "chat": 1, "group": 0}


async def test_webhook_delivery_with_secret(standin: BotApiStandin, bot: Bot) -> None:
    received: list[tuple[str | None, Any]] = []
    answers = [500]  # the first delivery is refused; the stand-in retries

    async def receive(request: web.Request) -> web.Response:
        received.append((request.headers.get("X-Telegram-Bot-Api-Secret-Token"), await request.json()))
        return web.Response(status=answers.pop() if answers else 200)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    standin.webhook_retry_delays = (0.05,)
    try:
        assert await bot.set_webhook(url, secret_token="s3cret")
        assert standin.webhook is not None and standin.webhook["secret_token"] == "s3cret"
        assert (await bot.get_webhook_info()).url == url
        with pytest.raises(TelegramConflictError, match="webhook is active"):
            await bot.get_updates()
        update = standin.user_says(42, "via webhook")
        [delivery] = await standin.wait_webhook_delivered(1, timeout=3)
        assert delivery["update_id"] == update["update_id"] and delivery["attempt"] == 2
        assert [d["status"] for d in standin.webhook_deliveries] == [500, 200]
        assert received == [("s3cret", update), ("s3cret", update)]
        assert await bot.delete_webhook()
        assert standin.webhook is None and standin.conflicts == 0
        standin.user_says(42, "back to polling")
        [polled] = await bot.get_updates(timeout=0)
        assert polled.message is not None and polled.message.text == "back to polling"
    finally:
        await runner.cleanup()
