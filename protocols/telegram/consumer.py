"""`TelegramConsumer`: the base class for applications of `telegram` scopes, in the Channels style."""

from __future__ import annotations

from typing import Any

from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer

from protocols.dispatch import DirectDispatch
from protocols.telegram.types import (
    Button,
    TelegramCallbackQueryEvent,
    TelegramChatGoneEvent,
    TelegramChatMigratedEvent,
    TelegramConnectEvent,
    TelegramDisconnectEvent,
    TelegramMessageEvent,
    TelegramSendFailedEvent,
    TelegramSentEvent,
)

__all__ = ["TelegramConsumer", "button"]


def button(text: str, data: str) -> Button:
    return {"text": text, "data": data}


class TelegramConsumer(DirectDispatch, AsyncConsumer):
    """One instance per chat. Events dispatch by type (`telegram.message` -> `telegram_message`),
    and a command goes on to `command_<name>(event)` (`/subscribe house` -> `command_subscribe`)."""

    async def telegram_connect(self, event: TelegramConnectEvent) -> None:
        """The scope starts: the chat wrote for the first time, or it has subscriptions at start-up."""

    async def telegram_message(self, event: TelegramMessageEvent) -> None:
        command = event["command"]
        if command is None:
            await self.text_message(event)
            return
        handler = getattr(self, f"command_{command}", None)
        if handler is None:
            await self.unknown_command(event)
        else:
            await handler(event)

    async def text_message(self, event: TelegramMessageEvent) -> None:
        """A message that is not a command for this bot."""

    async def unknown_command(self, event: TelegramMessageEvent) -> None:
        """A command with no `command_<name>` method."""

    async def telegram_callback_query(self, event: TelegramCallbackQueryEvent) -> None:
        """An inline button was pressed; answer it with `answer_callback`."""

    async def telegram_sent(self, event: TelegramSentEvent) -> None:
        """A message or edit sent with a `ref` was delivered; `message_id` identifies it."""

    async def telegram_send_failed(self, event: TelegramSendFailedEvent) -> None:
        """A message or edit was given up."""

    async def telegram_chat_gone(self, event: TelegramChatGoneEvent) -> None:
        """The bot can no longer write to this chat (blocked, removed, or the chat is gone)."""

    async def telegram_chat_migrated(self, event: TelegramChatMigratedEvent) -> None:
        """The group was upgraded to a supergroup: `chat_id` is the new id from now on."""
        self.scope["chat"] = {**self.scope["chat"], "id": event["to_chat_id"], "type": "supergroup"}

    async def telegram_disconnect(self, event: TelegramDisconnectEvent) -> None:
        if event["final"]:
            raise StopConsumer()

    # Sending

    async def send_message(
        self,
        text: str,
        buttons: list[list[Button]] | None = None,
        ref: str | None = None,
        silent: bool = False,
    ) -> None:
        event: dict[str, Any] = {"type": "telegram.send_message", "text": text}
        if buttons:
            event["buttons"] = buttons
        if ref is not None:
            event["ref"] = ref
        if silent:
            event["silent"] = True
        await self.send(event)

    reply = send_message

    async def edit_message(
        self, message_id: int, text: str, buttons: list[list[Button]] | None = None, ref: str | None = None
    ) -> None:
        event: dict[str, Any] = {"type": "telegram.edit_message", "message_id": message_id, "text": text}
        if buttons:
            event["buttons"] = buttons
        if ref is not None:
            event["ref"] = ref
        await self.send(event)

    async def answer_callback(self, query_id: str, text: str | None = None, alert: bool = False) -> None:
        event: dict[str, Any] = {"type": "telegram.answer_callback", "id": query_id}
        if text is not None:
            event["text"] = text
        if alert:
            event["alert"] = True
        await self.send(event)

    @property
    def chat_id(self) -> int:
        return int(self.scope["chat"]["id"])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} chat={self.scope.get('chat', {}).get('id')!r}>"
