"""Bot API updates read into the events of the `telegram` sub-spec, field by field.

Only text messages and button presses become events; anything else (stickers, joins, an
update that did not come from Telegram) is None, which the server counts as ignored. A
malformed field raises KeyError, TypeError or ValueError, and costs its update alone.
"""

from __future__ import annotations

from typing import Any

from protocols.telegram.types import Chat, TelegramCallbackQueryEvent, TelegramMessageEvent, User

__all__ = ["ALLOWED_UPDATES", "callback_query", "kind", "message", "parse_command", "update_id"]

ALLOWED_UPDATES = ["message", "callback_query"]
# Telegram's own limit for a message's text: anything longer did not come from Telegram.
MAX_TEXT = 4096


def update_id(update: Any) -> int | None:
    """An update's id: a JSON integer from 0 up (not `true`, not 1.5); None for what is not an update.

    The poller confirms updates with `offset = id + 1`: `true` made it 2, and a negative one
    asks Telegram for the last updates over again (its "offset from the end of the queue").
    """
    if isinstance(update, dict):
        found = update.get("update_id")
        if type(found) is int and found >= 0:
            return found
    return None


def parse_command(text: str, bot_username: str) -> tuple[str | None, list[str]]:
    """("subscribe", ["house"]) for "/subscribe@our_bot house"; (None, words) for text or others' commands."""
    words = text.split()
    if not words or not words[0].startswith("/") or len(words[0]) < 2:
        return None, words
    command, _, addressee = words[0][1:].partition("@")
    if addressee and addressee.lower() != bot_username.lower():
        return None, words
    return command.lower(), words[1:]


def message(
    update: dict[str, Any], bot_username: str
) -> tuple[Chat, User | None, TelegramMessageEvent] | None:
    """A `message` update's chat, sender and event; None for anything but text."""
    text = update.get("text")
    chat = update.get("chat")
    if not isinstance(text, str) or not isinstance(chat, dict) or len(text) > MAX_TEXT:
        return None
    sender = _user(update.get("from"))
    command, args = parse_command(text, bot_username)
    event: TelegramMessageEvent = {
        "type": "telegram.message",
        "message_id": int(update.get("message_id", 0)),
        "text": text,
        "command": command,
        "args": args,
        # Telegram leaves `from` out of channel posts only, which are not asked for (ALLOWED_UPDATES).
        "from": sender,  # type: ignore[typeddict-item]
        "date": int(update.get("date", 0)),
    }
    return _chat(chat), sender, event


def callback_query(query: dict[str, Any]) -> tuple[Chat, User, TelegramCallbackQueryEvent] | None:
    """A button press's chat, sender and event; None without either."""
    msg = query.get("message") or {}
    chat = msg.get("chat")
    sender = _user(query.get("from"))
    if not isinstance(chat, dict) or sender is None:
        return None
    event: TelegramCallbackQueryEvent = {
        "type": "telegram.callback_query",
        "id": str(query.get("id", "")),
        "data": str(query.get("data", "")),
        "message_id": msg.get("message_id"),
        "from": sender,
        "date": int(msg.get("date", 0)),
    }
    return _chat(chat), sender, event


def kind(update: dict[str, Any]) -> str:
    """ "12 message": an update's id and kind, and nothing of what people wrote (for the log)."""
    found = next((key for key in ALLOWED_UPDATES if key in update), "other")
    return f"{update.get('update_id', '?')} {found}"


def _chat(chat: dict[str, Any]) -> Chat:
    title = chat.get("title")
    if title is None:
        title = " ".join(p for p in (chat.get("first_name"), chat.get("last_name")) if p) or None
    return {
        "id": int(chat["id"]),
        "type": str(chat.get("type", "private")),
        "title": title,
        "username": chat.get("username"),
    }


def _user(user: Any) -> User | None:
    if not isinstance(user, dict) or "id" not in user:
        return None
    return {
        "id": int(user["id"]),
        "username": user.get("username"),
        "first_name": str(user.get("first_name", "")),
        "is_bot": bool(user.get("is_bot", False)),
    }
