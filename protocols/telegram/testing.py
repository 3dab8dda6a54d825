"""`TelegramCommunicator`: drive a `telegram` application in-process, as Channels' communicators do."""

from __future__ import annotations

import itertools
import time
from typing import Any

from asgiref.testing import ApplicationCommunicator

from protocols.checking import checked
from protocols.telegram.events import validate_outgoing
from protocols.telegram.types import Chat, TelegramScope, TelegramSendEvent, User
from protocols.telegram.updates import parse_command

__all__ = ["TelegramCommunicator", "make_scope"]


def make_scope(
    chat_id: int = 1001, chat_type: str | None = None, username: str | None = "alice", **extra: Any
) -> TelegramScope:
    chat_type = chat_type or ("private" if chat_id > 0 else "supergroup")
    chat: Chat = {"id": chat_id, "type": chat_type, "title": "Test chat", "username": None}
    user: User | None = None
    if chat_type == "private":
        user = {"id": chat_id, "username": username, "first_name": "Alice", "is_bot": False}
    scope: TelegramScope = {
        "type": "telegram",
        "asgi": {"version": "3.0", "spec_version": "1.0"},
        "chat": chat,
        "user": user,
        "bot": {"id": 123456, "username": "gateway_test_bot"},
    }
    scope.update(extra)  # type: ignore[typeddict-item]
    return scope


class TelegramCommunicator(ApplicationCommunicator):
    def __init__(self, application: Any, chat_id: int = 1001, **scope: Any) -> None:
        super().__init__(checked(application, validate_outgoing), make_scope(chat_id, **scope))
        self._ids = itertools.count(1)

    def _from(self, user_id: int | None, username: str | None) -> User:
        uid = user_id if user_id is not None else abs(self.scope["chat"]["id"])
        return {"id": uid, "username": username, "first_name": "Alice", "is_bot": False}

    async def connect(self) -> None:
        await self.send_input({"type": "telegram.connect"})

    async def say(self, text: str, user_id: int | None = None, username: str | None = "alice") -> None:
        """A user writes `text` in the chat (commands are parsed as the server does)."""
        command, args = parse_command(text, self.scope["bot"]["username"])
        await self.send_input(
            {
                "type": "telegram.message",
                "message_id": next(self._ids),
                "text": text,
                "command": command,
                "args": args,
                "from": self._from(user_id, username),
                "date": int(time.time()),
            }
        )

    async def press(
        self, data: str, message_id: int = 1, user_id: int | None = None, username: str | None = "alice"
    ) -> None:
        await self.send_input(
            {
                "type": "telegram.callback_query",
                "id": f"cq{next(self._ids)}",
                "data": data,
                "message_id": message_id,
                "from": self._from(user_id, username),
                "date": int(time.time()),
            }
        )

    async def receive_output(self, timeout: float = 1) -> TelegramSendEvent:
        """The next event the application sent."""
        return await super().receive_output(timeout)  # type: ignore[no-any-return]

    async def disconnect(self, timeout: float = 1) -> None:
        await self.send_input({"type": "telegram.disconnect", "reason": "test", "final": True})
        await self.wait(timeout)
