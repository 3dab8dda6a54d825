"""The `telegram` sub-spec in-process: `TelegramConsumer`, `TelegramCommunicator`, event validation."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings

from protocols.telegram import TelegramConsumer, button
from protocols.telegram.events import validate_outgoing
from protocols.telegram.testing import TelegramCommunicator
from protocols.telegram.types import TelegramCallbackQueryEvent, TelegramMessageEvent
from protocols.telegram.updates import parse_command

if not settings.configured:
    settings.configure(CHANNEL_LAYERS={})


class EchoBot(TelegramConsumer):
    """What an extension looks like: one method per command."""

    async def command_ping(self, event: TelegramMessageEvent) -> None:
        who = event["from"]["username"] if event["from"] else "?"
        await self.reply(f"pong {' '.join(event['args'])} for @{who}", buttons=[[button("Again", "ping")]])

    async def unknown_command(self, event: TelegramMessageEvent) -> None:
        await self.reply(f"no /{event['command']} here")

    async def telegram_callback_query(self, event: TelegramCallbackQueryEvent) -> None:
        await self.answer_callback(event["id"], f"pressed {event['data']}")
        await self.edit_message(event["message_id"] or 0, "pressed")


async def test_commands_dispatch_to_methods_and_replies_validate() -> None:
    comm = TelegramCommunicator(EchoBot.as_asgi(), chat_id=42)
    await comm.connect()
    await comm.say("/ping@gateway_test_bot a b")
    assert await comm.receive_output() == {
        "type": "telegram.send_message",
        "text": "pong a b for @alice",
        "buttons": [[{"text": "Again", "data": "ping"}]],
    }
    await comm.say("/nope")
    assert (await comm.receive_output())["text"] == "no /nope here"
    await comm.say("/ping@another_bot")  # for another bot in the group: plain text, ignored
    assert await comm.receive_nothing()
    await comm.press("ping", message_id=7)
    answer = {"type": "telegram.answer_callback", "id": "cq4", "text": "pressed ping"}
    assert await comm.receive_output() == answer
    edit = {"type": "telegram.edit_message", "message_id": 7, "text": "pressed"}
    assert await comm.receive_output() == edit
    await comm.disconnect()


class Broken(TelegramConsumer):
    async def telegram_message(self, event: Any) -> None:
        await self.send({"type": "telegram.send_message", "text": "x" * 5000})


async def test_an_invalid_send_raises_in_the_application() -> None:
    comm = TelegramCommunicator(Broken.as_asgi())
    await comm.say("hello")
    with pytest.raises(ValueError, match="at most 4096"):
        await comm.wait(1)


@pytest.mark.parametrize(
    ("event", "error", "match"),
    [
        ({"type": "telegram.send"}, ValueError, "unknown telegram event type"),
        ({"type": "telegram.send_message"}, ValueError, r"needs \['text'\]"),
        ({"type": "telegram.send_message", "text": "  "}, ValueError, "empty"),
        ({"type": "telegram.send_message", "text": b"x"}, TypeError, "text must be str"),
        ({"type": "telegram.send_message", "text": "x", "colour": 1}, ValueError, "unknown keys"),
        ({"type": "telegram.send_message", "text": "x", "buttons": [{"text": "a"}]}, TypeError, "rows"),
        (
            {"type": "telegram.send_message", "text": "x", "buttons": [[{"text": "a", "data": "d" * 65}]]},
            ValueError,
            "1 to 64 bytes",
        ),
        ({"type": "telegram.edit_message", "text": "x", "message_id": True}, TypeError, "must be int"),
        ({"type": "telegram.edit_message", "text": "x", "message_id": 0}, ValueError, "positive"),
        ({"type": "telegram.answer_callback", "id": 5}, TypeError, "id must be str"),
        ("telegram.send_message", TypeError, "must be a dict"),
    ],
)
def test_validation_names_the_problem(event: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        validate_outgoing(event)


def test_valid_events_pass_unchanged() -> None:
    event = {"type": "telegram.send_message", "text": "hi", "buttons": [[button("OK", "ok")]], "ref": "r1"}
    assert validate_outgoing(event) is event
    assert validate_outgoing({"type": "telegram.answer_callback", "id": "q", "alert": True})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/subscribe house", ("subscribe", ["house"])),
        ("/Subscribe@Gateway_Test_Bot  house  ", ("subscribe", ["house"])),
        ("/ack@other_bot abc", (None, ["/ack@other_bot", "abc"])),
        ("hello there", (None, ["hello", "there"])),
        ("/", (None, ["/"])),
        ("", (None, [])),
    ],
)
def test_parse_command(text: str, expected: tuple[str | None, list[str]]) -> None:
    assert parse_command(text, "gateway_test_bot") == expected
