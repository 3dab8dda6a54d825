"""The Telegram protocol server: one bot, one ASGI application instance per chat.

Updates come from a long poll (the default: edge boxes sit behind NAT) or from
the webhook view, which hands them to `feed`. An allowed chat gets an instance on
its first update that lives until the chat is no longer allowed; allowed chats
that have subscriptions get one at start-up, so that broadcasts reach them
before they write again. Any other chat gets an instance for as long as it has
updates to answer, so that strangers cost nothing once answered. Sends and edits
go through the `Outbox` (flow.py), which keeps to Telegram's limits.

aiogram is imported when the server starts, in a worker thread: it costs about
7 s and 160 MiB here, and must not hold up the MQTT and web servers. With a
`RedisLease`, only the process holding the lease polls and runs chat instances;
the others stand by.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gateway.ops import logs
from protocols.ratelimit import TokenBucket
from protocols.telegram.events import validate_outgoing
from protocols.telegram.flow import (
    ChatGone,
    ChatMoved,
    Job,
    Limits,
    Outbox,
    Rejected,
    RetryAfter,
    Transient,
)
from protocols.telegram.lease import Lease
from protocols.telegram.types import Chat, TelegramScope, User

log = logs.telegram
_malformed_log = logs.RateLimit(interval=30.0)
_chat_log = logs.RateLimit(interval=60.0)

__all__ = ["TelegramServer", "TelegramSettings", "parse_command"]

ALLOWED_UPDATES = ["message", "callback_query"]
# What one chat may send: a burst of commands, then one a second; the rest is dropped and counted,
# so a flooding chat cannot fill the outbox with replies ahead of its own alerts and everyone else's.
CHAT_BURST, CHAT_RATE = 8.0, 1.0
# The chats whose rate is remembered, most recent kept: a stranger's outlives its instance.
RATE_MEMORY = 10_000
# Telegram's own limit for a message's text: anything longer did not come from Telegram.
MAX_TEXT = 4096


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


def parse_command(text: str, bot_username: str) -> tuple[str | None, list[str]]:
    """("subscribe", ["house"]) for "/subscribe@our_bot house"; (None, words) for text or others' commands."""
    words = text.split()
    if not words or not words[0].startswith("/") or len(words[0]) < 2:
        return None, words
    command, _, addressee = words[0][1:].partition("@")
    if addressee and addressee.lower() != bot_username.lower():
        return None, words
    return command.lower(), words[1:]


@dataclass(eq=False)
class _Instance:
    chat_id: int
    scope: TelegramScope
    allowed: bool  # False: ends as soon as it has nothing left to answer
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    restarts: int = 0
    gone: bool = False  # told the application its chat is gone; reset when the chat writes again


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
        on_state: Callable[[bool, str], None] = lambda up, detail: None,
        count: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.settings = settings
        self.application = application
        self.startup_chats = startup_chats
        self.allowed = allowed
        self.lease = lease or Lease()
        self.on_state = on_state
        self.count = count
        logs.hide_bot_token(settings.token)
        self.bot_user: dict[str, Any] = {"id": int(settings.token.split(":", 1)[0]), "username": ""}
        self.outbox = self._outbox(lambda o: count(f"send_{o}"))
        self.leading = asyncio.Event()
        self.up = asyncio.Event()
        self._instances: dict[int, _Instance] = {}
        self._strangers = 0  # instances of chats not allowed, running now
        self._buckets: OrderedDict[int, TokenBucket] = OrderedDict()  # incoming flood control per chat
        self._bot: Any = None
        self._aiogram: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._last_detail = ""  # the last API problem logged, so a long outage logs it once

    def _outbox(self, count: Callable[[str], None]) -> Outbox:
        return Outbox(self._perform, self.settings.limits, count=count, moved=self._moved)

    # Lifecycle

    async def serve(self, stop: asyncio.Event) -> None:
        started = time.monotonic()
        self.on_state(False, "starting")
        self.lease.on_standby = lambda: self.on_state(True, "standby")
        try:
            await asyncio.to_thread(importlib.import_module, "aiogram")
        except Exception as err:  # pragma: no cover - aiogram is a core dependency
            log.error("cannot import aiogram: %s", err)
            self.on_state(False, "aiogram missing")
            return
        self._aiogram = _Aiogram()
        self._bot = self._aiogram.bot(self.settings.token, self.settings.api_url)
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
                    self.up.clear()
                    await self._stand_down(flush=stop.is_set())
                    await self.lease.release()
        finally:
            self._stopping = True
            await self.lease.close()
            await self._bot.session.close()

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
            self._instance_for(chat, None)
        if chats:
            log.info("%d subscribed chats ready", len(chats))
        work = asyncio.ensure_future(
            self._poll() if self.settings.mode == "polling" else self._set_webhook(stop)
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
        for inst in self._instances.values():
            inst.queue.put_nowait({"type": "telegram.disconnect", "reason": "server stopping", "final": True})
        tasks = [i.task for i in self._instances.values() if i.task is not None and not i.task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=3.0)
            for task in pending:
                task.cancel()
        self._instances.clear()
        self._strangers = 0
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        self._tasks.clear()
        self.outbox = self._outbox(self.outbox.count)

    async def _prepare(self) -> None:
        bot = self._bot
        me = await bot.get_me()
        self.bot_user = {"id": me.id, "username": me.username or ""}
        if self.settings.commands:
            await bot.set_my_commands(
                [self._aiogram.command(name, text) for name, text in self.settings.commands]
            )

    async def _poll(self) -> None:
        bot, ag = self._bot, self._aiogram
        delay = self.settings.backoff_min
        prepared = False
        offset: int | None = None
        try:
            while True:
                try:
                    if not prepared:
                        await self._prepare()
                        await bot.delete_webhook(drop_pending_updates=False)
                        prepared = True
                        # The API answers: up now, not when the first long poll ends.
                        log.info("polling as @%s", self.bot_user["username"])
                        self._up()
                    updates = await bot.get_updates(
                        offset=offset,
                        timeout=self.settings.poll_timeout,
                        allowed_updates=ALLOWED_UPDATES,
                        request_timeout=self.settings.poll_timeout + 10,
                    )
                except ag.errors.TelegramUnauthorizedError:
                    self._down("the bot token was refused (401)")
                    delay = self.settings.backoff_max
                except ag.errors.TelegramConflictError as err:
                    self._down(f"another poller or a webhook is active (409: {err.message})")
                    prepared = False  # deleteWebhook again
                except ag.errors.TelegramRetryAfter as err:
                    self._down(f"429, retry after {err.retry_after}s")
                    await asyncio.sleep(err.retry_after)
                    continue
                except ag.errors.ClientDecodeError as err:
                    # One update aiogram cannot read must not wedge every poll after it: take the
                    # batch as plain JSON, which `feed` checks field by field.
                    try:
                        raw = await self._raw_updates(offset)
                    except (OSError, TimeoutError, ValueError, KeyError) as raw_err:
                        self._down(_describe(raw_err))
                    else:
                        allowed, _ = _malformed_log.allow("batch")
                        if allowed:
                            # Ids and kinds only: the batch itself holds what people wrote.
                            log.warning(
                                "aiogram could not read an update batch (%s); taking it as JSON: %s",
                                type(err.original).__name__,
                                ", ".join(_update_kind(u) for u in raw),
                            )
                        for update in raw:
                            offset = int(update["update_id"]) + 1
                            self.feed(update)
                        continue
                except (ag.errors.TelegramAPIError, OSError, TimeoutError) as err:
                    self._down(_describe(err))
                else:
                    if not self.up.is_set():
                        log.info("Telegram API answers again")
                        self._up()
                    delay = self.settings.backoff_min
                    for update in updates:
                        offset = update.update_id + 1
                        self.feed(update.model_dump(mode="json", by_alias=True, exclude_none=True))
                    continue
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.settings.backoff_max)
        finally:
            if offset is not None:
                # Confirm the last batch, or the next poller would get it again.
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(bot.get_updates(offset=offset, timeout=0, limit=1), 2.0)

    async def _raw_updates(self, offset: int | None) -> list[dict[str, Any]]:
        import json

        import aiohttp

        url = f"{self.settings.api_url.rstrip('/')}/bot{self.settings.token}/getUpdates"
        params = {"timeout": "0", "allowed_updates": json.dumps(ALLOWED_UPDATES)}
        if offset is not None:
            params["offset"] = str(offset)
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
            session.get(url, params=params) as response,
        ):
            body = await response.json(content_type=None)
        if not isinstance(body, dict) or not body.get("ok") or not isinstance(body.get("result"), list):
            raise ValueError(f"getUpdates answered {response.status}")
        return [u for u in body["result"] if isinstance(u, dict) and isinstance(u.get("update_id"), int)]

    async def _set_webhook(self, stop: asyncio.Event) -> None:
        s = self.settings
        delay = s.backoff_min
        while True:
            try:
                await self._prepare()
                await self._bot.set_webhook(
                    url=s.webhook_url.rstrip("/") + s.webhook_path,
                    secret_token=s.webhook_secret,
                    allowed_updates=ALLOWED_UPDATES,
                )
            except (self._aiogram.errors.TelegramAPIError, OSError, TimeoutError) as err:
                self._down(_describe(err))
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, s.backoff_max)
                continue
            log.info("webhook set for @%s", self.bot_user["username"])
            self._up()
            await stop.wait()
            return

    def _up(self) -> None:
        self.up.set()
        self.on_state(True, self.settings.mode)

    def _down(self, detail: str) -> None:
        detail = logs.redact(detail)
        if self.up.is_set() or self._last_detail != detail:
            log.warning("Telegram API: %s", detail)
        self._last_detail = detail
        self.up.clear()
        self.on_state(False, detail)

    # Updates in

    def feed(self, update: dict[str, Any]) -> bool:
        """Route one update (a Bot API `Update` as JSON) to its chat's instance; False if not taken."""
        if not self.leading.is_set():
            return False
        try:
            if isinstance(update.get("message"), dict):
                self._on_message(update["message"])
            elif isinstance(update.get("callback_query"), dict):
                self._on_callback(update["callback_query"])
            else:
                self.count("update_ignored")
        except (KeyError, TypeError, ValueError) as err:
            # A malformed update costs itself, never the updates after it.
            self.count("update_malformed")
            allowed, held = _malformed_log.allow("update")
            if allowed:
                log.warning("ignored a malformed update (%s; %d more not logged)", err, held)
        return True

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

    def _on_message(self, message: dict[str, Any]) -> None:
        text = message.get("text")
        chat = message.get("chat")
        if not isinstance(text, str) or not isinstance(chat, dict) or len(text) > MAX_TEXT:
            self.count("update_ignored")  # stickers, photos, joins, or not from Telegram at all
            return
        sender = _user(message.get("from"))
        scope_chat = _chat(chat)
        if not self._within_rate(scope_chat["id"]):
            return
        inst = self._instance_for(scope_chat, sender)
        if inst is None:
            return
        inst.gone = False
        command, args = parse_command(text, self.bot_user["username"])
        self.count("message")
        inst.queue.put_nowait(
            {
                "type": "telegram.message",
                "message_id": int(message.get("message_id", 0)),
                "text": text,
                "command": command,
                "args": args,
                "from": sender,
                "date": int(message.get("date", 0)),
            }
        )

    def _on_callback(self, query: dict[str, Any]) -> None:
        message = query.get("message") or {}
        chat = message.get("chat")
        sender = _user(query.get("from"))
        if not isinstance(chat, dict) or sender is None:
            self.count("update_ignored")
            return
        scope_chat = _chat(chat)
        if not self._within_rate(scope_chat["id"]):
            return
        inst = self._instance_for(scope_chat, sender)
        if inst is None:
            return
        self.count("callback_query")
        inst.queue.put_nowait(
            {
                "type": "telegram.callback_query",
                "id": str(query.get("id", "")),
                "data": str(query.get("data", "")),
                "message_id": message.get("message_id"),
                "from": sender,
                "date": int(message.get("date", 0)),
            }
        )

    # Instances

    def _instance_for(self, chat: Chat, user: User | None) -> _Instance | None:
        inst = self._instances.get(chat["id"])
        if inst is not None and inst.allowed:
            return inst
        allowed = self.allowed(chat["id"])
        if inst is not None:
            if not allowed:
                return inst
            self._forget(inst)  # allowed by a reload since: that one ends once answered, as it was
        if not allowed:
            if self._strangers >= self.settings.max_strangers:
                self.count("chat_cap")
                allowed_now, held = _chat_log.allow("strangers")
                if allowed_now:
                    log.warning(
                        "chat %s ignored: already answering %d chats that are not allowed "
                        "(%d more not logged)",
                        chat["id"],
                        self._strangers,
                        held,
                    )
                return None
            self._strangers += 1
        scope: TelegramScope = {
            "type": "telegram",
            "asgi": {"version": "3.0", "spec_version": "1.0"},
            "chat": chat,
            "user": user if chat["type"] == "private" else None,
            "bot": {"id": self.bot_user["id"], "username": self.bot_user["username"]},
        }
        inst = _Instance(chat["id"], scope, allowed)
        self._instances[chat["id"]] = inst
        inst.queue.put_nowait({"type": "telegram.connect"})
        self._start(inst)
        return inst

    def _start(self, inst: _Instance) -> None:
        receive = inst.queue.get if inst.allowed else partial(self._stranger_receive, inst)
        coro = self.application(dict(inst.scope), receive, partial(self._send, inst))
        inst.task = asyncio.ensure_future(coro)
        inst.task.add_done_callback(partial(self._instance_done, inst))

    async def _stranger_receive(self, inst: _Instance) -> dict[str, Any]:
        if not inst.queue.empty():
            return inst.queue.get_nowait()
        # All answered: the instance ends, and the chat's next update makes a new one.
        self._forget(inst)
        return {"type": "telegram.disconnect", "reason": "nothing left to answer", "final": True}

    def _forget(self, inst: _Instance) -> None:
        if self._instances.get(inst.chat_id) is inst:
            del self._instances[inst.chat_id]
            if not inst.allowed:
                self._strangers -= 1

    def _instance_done(self, inst: _Instance, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            self._forget(inst)
            return
        exc = task.exception()
        log.error("application for Telegram chat %s failed: %r", inst.chat_id, exc, exc_info=exc)
        self.count("app_error")
        if self._stopping or self._instances.get(inst.chat_id) is not inst:
            return
        if not inst.allowed:
            self._forget(inst)
        elif inst.restarts < 5:
            inst.restarts += 1
            inst.queue.put_nowait({"type": "telegram.connect"})
            asyncio.get_running_loop().call_later(0.5 * inst.restarts, self._start, inst)
        else:
            log.error("application for Telegram chat %s failed 5 times; the chat is ignored", inst.chat_id)

    def allowance_changed(self) -> None:
        """After a reload: the instances of chats no longer allowed end (and with them their groups);
        a chat newly allowed gets its lasting instance on its next update."""
        for inst in list(self._instances.values()):
            if inst.allowed and not self.allowed(inst.chat_id):
                self._end(inst, "not allowed")

    def _end(self, inst: _Instance, reason: str) -> None:
        """No more updates reach `inst`; it ends (and leaves its groups) once it has read this."""
        self._forget(inst)
        inst.queue.put_nowait({"type": "telegram.disconnect", "reason": reason, "final": True})

    # Events out

    async def _send(self, inst: _Instance, event: dict[str, Any]) -> None:
        checked: dict[str, Any] = dict(validate_outgoing(event))
        if checked["type"] == "telegram.answer_callback":
            task = asyncio.ensure_future(self._answer_callback(checked))
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

    def _job_done(self, inst: _Instance, job: Job, outcome: str, detail: Any) -> None:
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

    async def _answer_callback(self, event: dict[str, Any]) -> None:
        try:
            await self._bot.answer_callback_query(
                callback_query_id=event["id"], text=event.get("text"), show_alert=event.get("alert", False)
            )
            self.count("callback_answered")
        except (self._aiogram.errors.TelegramAPIError, OSError, TimeoutError) as err:
            # A query older than a few seconds can no longer be answered; nothing else to do.
            self.count("callback_answer_failed")
            log.info("could not answer a button press: %s", _describe(err))

    async def _perform(self, job: Job) -> int:
        """One Bot API request for the outbox, its failure mapped onto the outbox's exceptions."""
        ag = self._aiogram
        p = job.params
        markup = ag.keyboard(p.get("buttons"))
        try:
            if job.method == "send_message":
                message = await self._bot.send_message(
                    chat_id=job.chat_id,
                    text=p["text"],
                    reply_markup=markup,
                    disable_notification=p.get("silent", False),
                )
                return int(message.message_id)
            await self._bot.edit_message_text(
                text=p["text"], chat_id=job.chat_id, message_id=p["message_id"], reply_markup=markup
            )
            return int(p["message_id"])
        except ag.errors.TelegramRetryAfter as err:
            raise RetryAfter(err.retry_after) from None
        except ag.errors.TelegramMigrateToChat as err:
            raise ChatMoved(err.migrate_to_chat_id) from None
        except ag.errors.TelegramForbiddenError as err:
            raise ChatGone(err.message) from None
        except ag.errors.TelegramBadRequest as err:
            text = err.message.lower()
            if "message is not modified" in text:
                return int(p["message_id"])
            if "chat not found" in text or "bot was kicked" in text or "user is deactivated" in text:
                raise ChatGone(err.message) from None
            raise Rejected(err.message) from None
        except (
            ag.errors.TelegramNetworkError,
            ag.errors.TelegramServerError,
            # A refused token is the operator's to fix; what is owed waits for it.
            ag.errors.TelegramUnauthorizedError,
            OSError,
            TimeoutError,
        ) as err:
            raise Transient(_describe(err)) from None
        except ag.errors.TelegramAPIError as err:
            raise Rejected(_describe(err)) from None

    def _moved(self, old: int, new: int) -> None:
        inst = self._instances.pop(old, None)
        if inst is None:
            return
        replaced = self._instances.get(new)
        if replaced is not None:
            # The supergroup wrote first, with an instance of its own (a stranger's, or a lasting
            # one if its id was already allowed): the group's, which holds what is owed, takes over.
            self._end(replaced, "chat migrated")
        inst.chat_id = new
        inst.scope = {**inst.scope, "chat": {**inst.scope["chat"], "id": new, "type": "supergroup"}}
        self._instances[new] = inst
        inst.queue.put_nowait({"type": "telegram.chat_migrated", "from_chat_id": old, "to_chat_id": new})


class _Aiogram:
    """The parts of aiogram the server uses, imported on first use (see the module docstring)."""

    def __init__(self) -> None:
        from aiogram import exceptions
        from aiogram.types import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup

        self.errors = exceptions
        self._command = BotCommand
        self._button = InlineKeyboardButton
        self._markup = InlineKeyboardMarkup

    def bot(self, token: str, api_url: str) -> Any:
        from aiogram import Bot
        from aiogram.client.session.aiohttp import AiohttpSession
        from aiogram.client.telegram import TelegramAPIServer

        session = AiohttpSession(api=TelegramAPIServer.from_base(api_url))
        return Bot(token, session=session)

    def command(self, name: str, description: str) -> Any:
        return self._command(command=name, description=description)

    def keyboard(self, rows: list[list[dict[str, str]]] | None) -> Any:
        if not rows:
            return None
        return self._markup(
            inline_keyboard=[
                [self._button(text=b["text"], callback_data=b["data"]) for b in row] for row in rows
            ]
        )


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


def _update_kind(update: dict[str, Any]) -> str:
    kind = next((key for key in ALLOWED_UPDATES if key in update), "other")
    return f"{update['update_id']} {kind}"


def _describe(err: BaseException) -> str:
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    return logs.redact(f"{type(err).__name__}: {message}")


async def _no_chats() -> list[Chat]:
    return []
