"""Scope and event types of the `telegram` ASGI sub-spec (docs/specs/telegram.md)."""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

from asgiref.typing import ASGIVersions


class Chat(TypedDict):
    id: int
    type: str  # private | group | supergroup | channel
    title: str | None  # group title, or the user's name in a private chat
    username: str | None


class User(TypedDict):
    id: int
    username: str | None
    first_name: str
    is_bot: bool


class Bot(TypedDict):
    id: int
    username: str


class TelegramScope(TypedDict):
    type: Literal["telegram"]
    asgi: ASGIVersions
    chat: Chat
    user: User | None  # the private chat's user; None for groups and for scopes made at start-up
    bot: Bot


class TelegramConnectEvent(TypedDict):
    type: Literal["telegram.connect"]


# Functional form: "from" is a Python keyword.
TelegramMessageEvent = TypedDict(
    "TelegramMessageEvent",
    {
        "type": Literal["telegram.message"],
        "message_id": int,
        "text": str,
        "command": str | None,  # "subscribe" for "/subscribe@our_bot house"; None for plain text
        "args": list[str],
        "from": User,
        "date": int,
    },
)

TelegramCallbackQueryEvent = TypedDict(
    "TelegramCallbackQueryEvent",
    {
        "type": Literal["telegram.callback_query"],
        "id": str,
        "data": str,
        "message_id": int | None,
        "from": User,
        "date": int,
    },
)


class TelegramSentEvent(TypedDict):
    type: Literal["telegram.sent"]
    ref: str
    message_id: int


class TelegramSendFailedEvent(TypedDict):
    type: Literal["telegram.send_failed"]
    ref: str | None
    error: str
    permanent: bool


class TelegramChatGoneEvent(TypedDict):
    type: Literal["telegram.chat_gone"]
    reason: str


class TelegramChatMigratedEvent(TypedDict):
    type: Literal["telegram.chat_migrated"]
    from_chat_id: int
    to_chat_id: int  # the group became this supergroup: the scope's chat has this id from now on


class TelegramDisconnectEvent(TypedDict):
    type: Literal["telegram.disconnect"]
    reason: str
    final: bool


class Button(TypedDict):
    text: str
    data: str


class TelegramSendMessageEvent(TypedDict):
    type: Literal["telegram.send_message"]
    text: str
    buttons: NotRequired[list[list[Button]]]
    ref: NotRequired[str]
    silent: NotRequired[bool]


class TelegramEditMessageEvent(TypedDict):
    type: Literal["telegram.edit_message"]
    message_id: int
    text: str
    buttons: NotRequired[list[list[Button]]]
    ref: NotRequired[str]


class TelegramAnswerCallbackEvent(TypedDict):
    type: Literal["telegram.answer_callback"]
    id: str
    text: NotRequired[str]
    alert: NotRequired[bool]


TelegramReceiveEvent = (
    TelegramConnectEvent
    | TelegramMessageEvent
    | TelegramCallbackQueryEvent
    | TelegramSentEvent
    | TelegramSendFailedEvent
    | TelegramChatGoneEvent
    | TelegramChatMigratedEvent
    | TelegramDisconnectEvent
)
TelegramSendEvent = TelegramSendMessageEvent | TelegramEditMessageEvent | TelegramAnswerCallbackEvent
