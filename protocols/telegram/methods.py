"""The Bot API calls whose answers the gateway reads as JSON: aiogram's methods, with plain answers.

aiogram answers `getUpdates` with `Update` models and `sendMessage` with a `Message`. Building
those two models' validators takes 0.2 and 0.16 s of CPU on their first use (their types
reach most of the Bot API's), in the event loop's thread, and 10 MiB; each answer is then
validated field by field. The gateway needs neither: it reads updates field by field itself
(protocols.telegram.updates, which takes hostile JSON) and keeps only a sent message's id.

So these methods are aiogram's own, through its `Bot` and session (errors, retry-after,
migrations and all), declared as aiogram declares its methods (`TelegramMethod`, its public
base for methods), with JSON answers: validating `list[dict]` costs next to nothing. A reply
markup is sent as the JSON it is (a dict), so no keyboard model is built either.

Imported once aiogram is (protocols.telegram.bot's `_Aiogram`): importing it imports aiogram.
"""

from __future__ import annotations

from typing import Any

from aiogram.methods import TelegramMethod

__all__ = ["EditText", "Send", "Updates"]

Json = dict[str, Any]


class Updates(TelegramMethod[list[Json]]):
    """`getUpdates`: each update as its JSON object."""

    __returning__ = list[Json]
    __api_method__ = "getUpdates"

    offset: int | None = None
    limit: int | None = None
    timeout: int | None = None
    allowed_updates: list[str] | None = None


class Send(TelegramMethod[Json]):
    """`sendMessage`: the message sent, as JSON (the gateway keeps its `message_id`)."""

    __returning__ = Json
    __api_method__ = "sendMessage"

    chat_id: int
    text: str
    reply_markup: Json | None = None
    disable_notification: bool | None = None


class EditText(TelegramMethod[Json | bool]):
    """`editMessageText`: the message as JSON (or true, for an inline message)."""

    __returning__ = Json | bool
    __api_method__ = "editMessageText"

    chat_id: int
    message_id: int
    text: str
    reply_markup: Json | None = None
