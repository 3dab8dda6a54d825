"""The Telegram server's chats: one application instance each, allowed chats' for as long as
they are allowed, strangers' for as long as they have updates to answer (and at most
`max_strangers` of those at once). An allowed chat's instance that fails is started again a
few times, with what is queued for it; a stranger's is not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gateway.ops import logs
from protocols.instances import Instance, Supervisor
from protocols.telegram.types import Bot, Chat, TelegramScope, User

log = logs.telegram
_chat_log = logs.RateLimit(interval=60.0)

__all__ = ["ChatInstance", "Chats"]

# An allowed chat's instance that fails is started again after 0.5 s, 1 s, 1.5 s, ... this many times.
RESTARTS = 5


@dataclass(eq=False)
class ChatInstance(Instance):
    chat_id: int
    allowed: bool  # False: ends as soon as it has nothing left to answer
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    gone: bool = False  # told the application its chat is gone; reset when the chat writes again


class Chats:
    def __init__(
        self,
        application: Callable[..., Any],
        *,
        allowed: Callable[[int], bool],
        bot: Callable[[], Bot],
        send: Callable[[ChatInstance, dict[str, Any]], Awaitable[None]],
        max_strangers: int,
        count: Callable[[str], None],
    ) -> None:
        """`allowed(chat id)` is asked at every new instance; `bot()` is the bot of their scopes."""
        self.allowed, self.bot, self.max_strangers, self.count = allowed, bot, max_strangers, count
        self.instances: dict[int, ChatInstance] = {}
        self.strangers = 0  # instances of chats not allowed, running now
        self._supervisor: Supervisor[ChatInstance] = Supervisor(
            application,
            receive=lambda inst: inst.queue.get if inst.allowed else partial(self._stranger_receive, inst),
            send=lambda inst: partial(send, inst),
            failed=self._failed,
            ended=self.forget,
            describe=lambda inst: f"Telegram chat {inst.chat_id}",
            log=log,
        )

    def instance_for(self, chat: Chat, user: User | None) -> ChatInstance | None:
        inst = self.instances.get(chat["id"])
        if inst is not None and inst.allowed:
            return inst
        allowed = self.allowed(chat["id"])
        if inst is not None:
            if not allowed:
                return inst
            self.forget(inst)  # allowed by a reload since: that one ends once answered, as it was
        if not allowed:
            if self.strangers >= self.max_strangers:
                self.count("chat_cap")
                allowed_now, held = _chat_log.allow("strangers")
                if allowed_now:
                    log.warning(
                        "chat %s ignored: already answering %d chats that are not allowed "
                        "(%d more not logged)",
                        chat["id"],
                        self.strangers,
                        held,
                    )
                return None
            self.strangers += 1
        scope: TelegramScope = {
            "type": "telegram",
            "asgi": {"version": "3.0", "spec_version": "1.0"},
            "chat": chat,
            "user": user if chat["type"] == "private" else None,
            "bot": self.bot(),
        }
        inst = ChatInstance(chat_id=chat["id"], scope=scope, allowed=allowed)
        self.instances[chat["id"]] = inst
        inst.queue.put_nowait({"type": "telegram.connect"})
        self._supervisor.start(inst)
        return inst

    async def _stranger_receive(self, inst: ChatInstance) -> dict[str, Any]:
        if not inst.queue.empty():
            return inst.queue.get_nowait()
        # All answered: the instance ends, and the chat's next update makes a new one.
        self.forget(inst)
        return {"type": "telegram.disconnect", "reason": "nothing left to answer", "final": True}

    def forget(self, inst: ChatInstance) -> None:
        if self.instances.get(inst.chat_id) is inst:
            del self.instances[inst.chat_id]
            if not inst.allowed:
                self.strangers -= 1

    def _failed(self, inst: ChatInstance, exc: BaseException) -> float | None:
        """The supervisor's policy: an allowed chat's instance starts again, a few times."""
        self.count("app_error")
        if self._supervisor.closed or self.instances.get(inst.chat_id) is not inst:
            return None
        if not inst.allowed:
            self.forget(inst)
            return None
        if inst.failures <= RESTARTS:
            inst.queue.put_nowait({"type": "telegram.connect"})
            return 0.5 * inst.failures
        log.error(
            "application for Telegram chat %s failed %d times; the chat is ignored", inst.chat_id, RESTARTS
        )
        return None

    def allowance_changed(self) -> None:
        """After a reload: the instances of chats no longer allowed end (and with them their groups);
        a chat newly allowed gets its lasting instance on its next update."""
        for inst in list(self.instances.values()):
            if inst.allowed and not self.allowed(inst.chat_id):
                self.end(inst, "not allowed")

    def end(self, inst: ChatInstance, reason: str) -> None:
        """No more updates reach `inst`; it ends (and leaves its groups) once it has read this."""
        self.forget(inst)
        inst.queue.put_nowait({"type": "telegram.disconnect", "reason": reason, "final": True})

    def move(self, old: int, new: int) -> None:
        """The group `old` is the supergroup `new` now: so is its instance, which is told."""
        inst = self.instances.pop(old, None)
        if inst is None:
            return
        replaced = self.instances.get(new)
        if replaced is not None:
            # The supergroup wrote first, with an instance of its own (a stranger's, or a lasting
            # one if its id was already allowed): the group's, which holds what is owed, takes over.
            self.end(replaced, "chat migrated")
        inst.chat_id = new
        inst.scope = {**inst.scope, "chat": {**inst.scope["chat"], "id": new, "type": "supergroup"}}
        self.instances[new] = inst
        inst.queue.put_nowait({"type": "telegram.chat_migrated", "from_chat_id": old, "to_chat_id": new})

    def stop(self) -> None:
        """No instance starts again: the server stands down."""
        self._supervisor.stop()

    async def close(self, timeout: float) -> None:
        """Tell every instance the server stops; wait at most `timeout` for them to end, then cancel."""
        self.stop()
        for inst in self.instances.values():
            inst.queue.put_nowait({"type": "telegram.disconnect", "reason": "server stopping", "final": True})
        await self._supervisor.close(timeout)
        self.instances.clear()
        self.strangers = 0
