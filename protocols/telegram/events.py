"""Checks on what an application sends: an invalid event raises from `send`, as ASGI asks."""

from __future__ import annotations

from typing import Any, cast

from protocols.telegram.types import TelegramSendEvent

__all__ = ["MAX_TEXT", "validate_outgoing"]

MAX_TEXT = 4096  # Telegram's limit on a message, in characters
MAX_CALLBACK_DATA = 64  # bytes
MAX_CALLBACK_ANSWER = 200

_KEYS = {
    "telegram.send_message": ({"type", "text"}, {"buttons", "ref", "silent"}),
    "telegram.edit_message": ({"type", "message_id", "text"}, {"buttons", "ref"}),
    "telegram.answer_callback": ({"type", "id"}, {"text", "alert"}),
}


def validate_outgoing(event: Any) -> TelegramSendEvent:
    if not isinstance(event, dict):
        raise TypeError(f"a telegram event must be a dict, got {type(event).__name__}")
    kind = event.get("type")
    if kind not in _KEYS:
        raise ValueError(f"unknown telegram event type {kind!r}; expected one of {sorted(_KEYS)}")
    required, optional = _KEYS[kind]
    missing = required - set(event)
    if missing:
        raise ValueError(f"{kind} needs {sorted(missing)}")
    unknown = set(event) - required - optional
    if unknown:
        raise ValueError(f"{kind} has unknown keys {sorted(unknown)}")
    if kind == "telegram.answer_callback":
        _typed(event, "id", str)
        text = _typed(event, "text", str, optional=True)
        if text is not None and len(text) > MAX_CALLBACK_ANSWER:
            raise ValueError(f"telegram.answer_callback text is over {MAX_CALLBACK_ANSWER} characters")
        _typed(event, "alert", bool, optional=True)
        return cast(TelegramSendEvent, event)
    text = _typed(event, "text", str)
    if not text.strip():
        raise ValueError(f"{kind} text is empty")
    if len(text) > MAX_TEXT:
        raise ValueError(f"{kind} text has {len(text)} characters; Telegram takes at most {MAX_TEXT}")
    if kind == "telegram.edit_message":
        message_id = _typed(event, "message_id", int)
        if message_id <= 0:
            raise ValueError("telegram.edit_message message_id must be positive")
    _typed(event, "ref", str, optional=True)
    _typed(event, "silent", bool, optional=True)
    if "buttons" in event:
        _check_buttons(kind, event["buttons"])
    return cast(TelegramSendEvent, event)


def _typed(event: dict[str, Any], key: str, kind: type, optional: bool = False) -> Any:
    value = event.get(key)
    if value is None and optional:
        return None
    # bool is an int: refuse True as a message id.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{event['type']} {key} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _check_buttons(kind: str, rows: Any) -> None:
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise TypeError(f"{kind} buttons must be a list of rows (lists)")
    for row in rows:
        for button in row:
            if not isinstance(button, dict) or set(button) != {"text", "data"}:
                raise ValueError(f'{kind} each button must be {{"text": str, "data": str}}, got {button!r}')
            if not isinstance(button["text"], str) or not button["text"]:
                raise TypeError(f"{kind} button text must be a non-empty str")
            if not isinstance(button["data"], str):
                raise TypeError(f"{kind} button data must be a str")
            if not 1 <= len(button["data"].encode("utf-8")) <= MAX_CALLBACK_DATA:
                raise ValueError(f"{kind} button data must be 1 to {MAX_CALLBACK_DATA} bytes")
