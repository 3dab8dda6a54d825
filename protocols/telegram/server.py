"""The Telegram protocol server: one bot, one ASGI application instance per chat.

Updates come from a long poll (the default: edge boxes sit behind NAT) or from
the webhook view, which hands them to `feed`; each goes to its chat's instance
(protocols.telegram.chats), read field by field (protocols.telegram.updates).
Sends and edits go through the `Outbox` (flow.py), which keeps to Telegram's
limits; the Bot API itself is protocols.telegram.bot's.

The bot comes up in the background: aiogram takes seconds to import. With a
`RedisLease`, only the process holding the lease polls and runs chat instances;
the others stand by.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gateway.ops import logs
from protocols.ratelimit import TokenBucket
from protocols.telegram import updates
from protocols.telegram.bot import BotApi
from protocols.telegram.chats import ChatInstance, Chats
from protocols.telegram.events import validate_outgoing
from protocols.telegram.flow import Job, Limits, Outbox
from protocols.telegram.lease import Lease
from protocols.telegram.types import Chat, User

log = logs.telegram
_malformed_log = logs.RateLimit(interval=30.0)
_chat_log = logs.RateLimit(interval=60.0)

__all__ = ["TelegramServer", "TelegramSettings"]

# What one chat may send: a burst of commands, then one a second; the rest is dropped and counted,
# so a flooding chat cannot fill the outbox with replies ahead of its own alerts and everyone else's.
CHAT_BURST, CHAT_RATE = 8.0, 1.0
# The chats whose rate is remembered, most recent kept: a stranger's outlives its instance.
RATE_MEMORY = 10_000
# aiogram's import takes seconds of CPU: it waits this long at most for `load_after` (MQTT connected).
LOAD_WAIT = 5.0


@dataclass
class TelegramSettings:
    token: str
    api_url: str = "https://api.telegram.org"
    mode: str = "polling"  # or "webhook"
    webhook_url: str = ""  # the gateway's public base URL; the secret path is appended
    webhook_secret: str = ""
    commands: list[tuple[str, str]] = field(default_factory=list)  # for setMyCommands
    poll_timeout: int = 25
    limits: Limits = field(default_factory=Limits)
    max_strangers: int = 1000  # chats that are not allowed, answered at once
    backoff_min: float = 0.5
    backoff_max: float = 30.0

    @property
    def webhook_path(self) -> str:
        """`/telegram/<secret>/`: derived from token and secret, so it changes when either does."""
        digest = hashlib.sha256(f"{self.token}\0{self.webhook_secret}".encode()).hexdigest()[:32]
        return f"/telegram/{digest}/"


class TelegramServer:
    name = "telegram"

    def __init__(
        self,
        settings: TelegramSettings,
        application: Callable[..., Any],
        *,
        startup_chats: Callable[[], Awaitable[list[Chat]]] = lambda: _no_chats(),
        allowed: Callable[[int], bool] = lambda chat_id: True,
        lease: Lease | None = None,
        load_after: asyncio.Event | None = None,
        on_state: Callable[[bool, str], None] = lambda up, detail: None,
        count: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.settings = settings
        self.application = application
        self.startup_chats = startup_chats
        self.allowed = allowed
        self.lease = lease or Lease()
        self.load_after = load_after
        self.on_state = on_state
        self.count = count
        logs.hide_bot_token(settings.token)
        self.api = BotApi(
            settings.token,
            settings.api_url,
            commands=settings.commands,
            backoff_min=settings.backoff_min,
            backoff_max=settings.backoff_max,
            on_state=on_state,
            count=count,
        )
        self.outbox = self._outbox(lambda o: count(f"send_{o}"))
        self.ready = asyncio.Event()
        self.leading = asyncio.Event()
        self._chats = self._new_chats()
        self._buckets: OrderedDict[int, TokenBucket] = OrderedDict()  # incoming flood control per chat
        self._tasks: set[asyncio.Task[Any]] = set()

    def _outbox(self, count: Callable[[str], None]) -> Outbox:
        return Outbox(self.api.perform, self.settings.limits, count=count, moved=self._moved)

    def _new_chats(self) -> Chats:
        return Chats(
            self.application,
            allowed=self.allowed,
            bot=lambda: {"id": self.api.user["id"], "username": self.api.user["username"]},
            send=self._send,
            max_strangers=self.settings.max_strangers,
            count=self.count,
        )

    # Lifecycle

    async def start(self) -> None:
        """Nothing to wait for: the bot comes up in the background (`serve`), as health reports."""
        self.ready.set()

    async def serve(self, stop: asyncio.Event) -> None:
        """Load aiogram; then, while this process holds the lease, run the bot until `stop`."""
        if self.load_after is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.load_after.wait(), LOAD_WAIT)
        started = time.monotonic()
        self.on_state(False, "starting")
        self.lease.on_standby = lambda: self.on_state(True, "standby")
        try:
            await self.api.load()
        except Exception as err:  # pragma: no cover - aiogram is a core dependency
            log.error("cannot import aiogram: %s", err)
            self.on_state(False, "aiogram missing")
            return
        log.info("aiogram loaded in %.1fs", time.monotonic() - started)
        try:
            while not stop.is_set():
                if not await self.lease.acquire(stop):
                    break
                log.info("this process now runs the Telegram bot (%s)", self.settings.mode)
                self.leading.set()
                try:
                    await self._lead(stop)
                finally:
                    self.leading.clear()
                    self.api.up.clear()
                    await self._stand_down(flush=stop.is_set())
                    await self.lease.release()
        finally:
            self._chats.stop()
            await self.lease.close()
            await self.api.close()

    async def _lead(self, stop: asyncio.Event) -> None:
        outbox = asyncio.ensure_future(self.outbox.run())
        self._tasks.add(outbox)
        try:
            chats = await self.startup_chats()
        except Exception:
            log.exception("could not read the subscribed chats")
            chats = []
        chats = [chat for chat in chats if self.allowed(chat["id"])]
        for chat in chats:
            self._chats.instance_for(chat, None)
        if chats:
            log.info("%d subscribed chats ready", len(chats))
        s = self.settings
        if s.mode == "polling":
            work = asyncio.ensure_future(self.api.poll(self.feed, s.poll_timeout))
        else:
            work = asyncio.ensure_future(
                self.api.set_webhook(s.webhook_url.rstrip("/") + s.webhook_path, s.webhook_secret, stop)
            )
        ended = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.lease.lost.wait()), work]
        try:
            await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in ended:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
        if work.done() and not work.cancelled() and work.exception() is not None:
            log.error("Telegram server failed: %r", work.exception())

    async def _stand_down(self, flush: bool) -> None:
        if flush and self.outbox.depth:
            log.info("delivering %d queued Telegram messages before stopping", self.outbox.depth)
            await self.outbox.drain(3.0)
        await self._chats.close(3.0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        self._tasks.clear()
        self.outbox = self._outbox(self.outbox.count)
        self._chats = self._new_chats()

    # Updates in

    def feed(self, update: dict[str, Any]) -> bool:
        """Route one update (a Bot API `Update` as JSON) to its chat's instance; False if not taken."""
        if not self.leading.is_set():
            return False
        try:
            if isinstance(update.get("message"), dict):
                self._deliver(updates.message(update["message"], self.api.user["username"]), "message")
            elif isinstance(update.get("callback_query"), dict):
                self._deliver(updates.callback_query(update["callback_query"]), "callback_query")
            else:
                self.count("update_ignored")
        except (KeyError, TypeError, ValueError) as err:
            # A malformed update costs itself, never the updates after it. Logged by its kind and
            # the error's, not the error's text: `int("...")` quotes what someone wrote.
            self.count("update_malformed")
            allowed, held = _malformed_log.allow("update")
            if allowed:
                what = f"{type(err).__name__} {err}" if isinstance(err, KeyError) else type(err).__name__
                log.warning(
                    "ignored a malformed update %s (%s; %d more not logged)", updates.kind(update), what, held
                )
        return True

    def _deliver(self, read: tuple[Chat, User | None, Any] | None, outcome: str) -> None:
        if read is None:
            self.count("update_ignored")  # stickers, photos, joins, or not from Telegram at all
            return
        chat, sender, event = read
        if not self._within_rate(chat["id"]):
            return
        inst = self._chats.instance_for(chat, sender)
        if inst is None:
            return
        if event["type"] == "telegram.message":
            inst.gone = False
        self.count(outcome)
        inst.queue.put_nowait(event)

    def _within_rate(self, chat_id: int) -> bool:
        bucket = self._buckets.pop(chat_id, None) or TokenBucket(CHAT_RATE, CHAT_BURST)
        self._buckets[chat_id] = bucket  # the most recent last
        if len(self._buckets) > RATE_MEMORY:
            self._buckets.popitem(last=False)
        if bucket.take():
            return True
        self.count("update_throttled")
        if _chat_log.allow(f"throttled {chat_id}")[0]:
            log.warning("chat %s sends too fast: updates dropped (at most %g a second)", chat_id, CHAT_RATE)
        return False

    def allowance_changed(self) -> None:
        """After a reload: the instances of chats no longer allowed end (and with them their groups);
        a chat newly allowed gets its lasting instance on its next update."""
        self._chats.allowance_changed()

    # Events out

    async def _send(self, inst: ChatInstance, event: dict[str, Any]) -> None:
        checked: dict[str, Any] = dict(validate_outgoing(event))
        if checked["type"] == "telegram.answer_callback":
            task = asyncio.ensure_future(self.api.answer_callback(checked))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        method = "send_message" if checked["type"] == "telegram.send_message" else "edit_message"
        # A send with a `ref` is owed to the chat (an alert): it has a lane of its own in the outbox.
        job = Job(inst.chat_id, method, checked, owed="ref" in checked, stranger=not inst.allowed)
        if inst.allowed:  # a stranger's instance has ended by the time its reply goes: nothing to tell
            job.done = partial(self._job_done, inst)
        if not self.outbox.submit(job):
            allowed, held = _chat_log.allow(f"full {job.owed}")
            if allowed:
                log.warning(
                    "Telegram queue full (%d waiting): %s to chat %s %s (%d more not logged)",
                    self.outbox.depth,
                    "an alert" if job.owed else "a reply",
                    inst.chat_id,
                    "kept to send later" if job.owed else "dropped",
                    held,
                )
            job.done(job, "full", "queue full")  # as an outcome the outbox reports

    def _job_done(self, inst: ChatInstance, job: Job, outcome: str, detail: Any) -> None:
        ref = job.params.get("ref")
        if outcome == "ok":
            if ref is not None:
                inst.queue.put_nowait({"type": "telegram.sent", "ref": ref, "message_id": int(detail)})
            return
        inst.queue.put_nowait(
            {"type": "telegram.send_failed", "ref": ref, "error": str(detail), "permanent": outcome != "full"}
        )
        if outcome == "gone" and not inst.gone:
            inst.gone = True
            inst.queue.put_nowait({"type": "telegram.chat_gone", "reason": str(detail)})

    def _moved(self, old: int, new: int) -> None:
        self._chats.move(old, new)


async def _no_chats() -> list[Chat]:
    return []
