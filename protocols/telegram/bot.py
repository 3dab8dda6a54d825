"""`BotApi`: the bot's side of the Bot API, through aiogram: who it is, its updates (a long poll,
or the webhook it sets), and each request the outbox makes, aiogram's errors mapped onto the
outbox's (protocols.telegram.flow). It says whether the API answers through `on_state`.

aiogram is imported by `load`, in a worker thread, through protocols.telegram._aiogram: with its
models built when first used (under a second and 66 MiB here, against 3.5 s and 165 MiB built
at import), and still not holding up the MQTT and web servers. Updates and sent messages come
back as JSON (protocols.telegram.methods): aiogram's `Update` and `Message` models, whose first
build took 0.2 and 0.16 s in the event loop and 10 MiB, are never built.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from gateway.ops import logs
from protocols.backoff import Backoff
from protocols.telegram import _aiogram
from protocols.telegram.flow import ChatGone, ChatMoved, Job, Rejected, RetryAfter, Transient
from protocols.telegram.updates import ALLOWED_UPDATES, kind, update_id

log = logs.telegram
_malformed_log = logs.RateLimit(interval=30.0)

__all__ = ["BotApi", "describe"]

# Retries after the API failed are spread by this fraction either way.
RETRY_JITTER = 0.2


class BotApi:
    def __init__(
        self,
        token: str,
        api_url: str,
        *,
        commands: list[tuple[str, str]],
        backoff_min: float,
        backoff_max: float,
        on_state: Callable[[bool, str], None],
        count: Callable[[str], None],
    ) -> None:
        self.token, self.api_url, self.commands = token, api_url, commands
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self.on_state, self.count = on_state, count
        self.user: dict[str, Any] = {"id": int(token.split(":", 1)[0]), "username": ""}
        self.up = asyncio.Event()
        self._bot: Any = None
        self._aiogram: Any = None
        self._last_detail = ""  # the last API problem logged, so a long outage logs it once

    async def load(self) -> None:
        """Import aiogram and make the bot, in a thread; ImportError if aiogram is missing.

        All of it in the thread: the import takes seconds of CPU, and the bot's session 40 ms
        more (an SSL context reads the system's certificates), which the loop need not wait."""
        self._aiogram, self._bot = await asyncio.to_thread(self._make)

    def _make(self) -> tuple[_Aiogram, Any]:
        _aiogram.load()
        parts = _Aiogram()
        return parts, parts.bot(self.token, self.api_url)

    async def close(self) -> None:
        if self._bot is not None:
            await self._bot.session.close()

    def _up(self, mode: str) -> None:
        self.up.set()
        self.on_state(True, mode)

    def _down(self, detail: str) -> None:
        detail = logs.redact(detail)
        if self.up.is_set() or self._last_detail != detail:
            log.warning("Telegram API: %s", detail)
        self._last_detail = detail
        self.up.clear()
        self.on_state(False, detail)

    async def _prepare(self) -> None:
        bot = self._bot
        me = await bot.get_me()
        self.user = {"id": me.id, "username": me.username or ""}
        if self.commands:
            await bot.set_my_commands([self._aiogram.command(name, text) for name, text in self.commands])

    # Updates in

    async def poll(self, feed: Callable[[dict[str, Any]], Any], timeout: int) -> None:
        """Long-poll for updates, each handed to `feed`, until cancelled; the API's failures back off."""
        bot, ag = self._bot, self._aiogram
        backoff = Backoff(self.backoff_min, self.backoff_max, RETRY_JITTER)
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
                        log.info("polling as @%s", self.user["username"])
                        self._up("polling")
                    # As JSON (protocols.telegram.methods): `feed` reads each field by field.
                    updates = await bot(
                        ag.updates(offset=offset, timeout=timeout, allowed_updates=ALLOWED_UPDATES),
                        request_timeout=timeout + 10,
                    )
                except ag.errors.TelegramUnauthorizedError:
                    self._down("the bot token was refused (401)")
                    backoff.exhaust()
                except ag.errors.TelegramConflictError as err:
                    self._down(f"another poller or a webhook is active (409: {err.message})")
                    prepared = False  # deleteWebhook again
                except ag.errors.TelegramRetryAfter as err:
                    self._down(f"429, retry after {err.retry_after}s")
                    await asyncio.sleep(err.retry_after)
                    continue
                except ag.errors.ClientDecodeError as err:
                    # A batch that is not a list of objects must not wedge every poll after it:
                    # its updates that are objects, with an update_id, are taken.
                    try:
                        raw = await self._raw_updates(offset)
                    except (OSError, TimeoutError, ValueError, KeyError) as raw_err:
                        self._down(describe(raw_err))
                    else:
                        allowed, _ = _malformed_log.allow("batch")
                        if allowed:
                            # Ids and kinds only: the batch itself holds what people wrote.
                            log.warning(
                                "aiogram could not read an update batch (%s); taking it as JSON: %s",
                                type(err.original).__name__,
                                ", ".join(kind(u) for u in raw),
                            )
                        offset = _take(raw, feed, offset)
                        continue
                except (ag.errors.TelegramAPIError, OSError, TimeoutError) as err:
                    self._down(describe(err))
                else:
                    if not self.up.is_set():
                        log.info("Telegram API answers again")
                        self._up("polling")
                    backoff.reset()
                    offset = _take(updates, feed, offset)
                    continue
                await asyncio.sleep(backoff.next())
        finally:
            if offset is not None:
                # Confirm the last batch, or the next poller would get it again.
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(bot.get_updates(offset=offset, timeout=0, limit=1), 2.0)

    async def _raw_updates(self, offset: int | None) -> list[dict[str, Any]]:
        """The batch as JSON: its updates (objects with an id, `update_id`)."""
        import aiohttp

        url = f"{self.api_url.rstrip('/')}/bot{self.token}/getUpdates"
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
        return [u for u in body["result"] if update_id(u) is not None]

    async def set_webhook(self, url: str, secret: str, stop: asyncio.Event) -> None:
        """Have Telegram send updates to `url` (the web server hands them to `feed`), until `stop`."""
        backoff = Backoff(self.backoff_min, self.backoff_max, RETRY_JITTER)
        while True:
            try:
                await self._prepare()
                await self._bot.set_webhook(url=url, secret_token=secret, allowed_updates=ALLOWED_UPDATES)
            except (self._aiogram.errors.TelegramAPIError, OSError, TimeoutError) as err:
                self._down(describe(err))
                await asyncio.sleep(backoff.next())
                continue
            log.info("webhook set for @%s", self.user["username"])
            self._up("webhook")
            await stop.wait()
            return

    # Requests out

    async def answer_callback(self, event: dict[str, Any]) -> None:
        try:
            await self._bot.answer_callback_query(
                callback_query_id=event["id"], text=event.get("text"), show_alert=event.get("alert", False)
            )
            self.count("callback_answered")
        except (self._aiogram.errors.TelegramAPIError, OSError, TimeoutError) as err:
            # A query older than a few seconds can no longer be answered; nothing else to do.
            self.count("callback_answer_failed")
            log.info("could not answer a button press: %s", describe(err))

    async def perform(self, job: Job) -> int:
        """One Bot API request for the outbox, its failure mapped onto the outbox's exceptions."""
        ag = self._aiogram
        p = job.params
        markup = keyboard(p.get("buttons"))
        try:
            if job.method == "send_message":
                message = await self._bot(
                    ag.send(
                        chat_id=job.chat_id,
                        text=p["text"],
                        reply_markup=markup,
                        disable_notification=p.get("silent", False),
                    )
                )
                message_id = message.get("message_id")
                if type(message_id) is not int:  # a JSON integer, not true
                    # Sent, by the API's word: sending it again would send it twice.
                    raise Rejected("sendMessage answered without a message_id")
                return message_id
            await self._bot(
                ag.edit(text=p["text"], chat_id=job.chat_id, message_id=p["message_id"], reply_markup=markup)
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
            raise Transient(describe(err)) from None
        except ag.errors.TelegramAPIError as err:
            raise Rejected(describe(err)) from None


def _take(batch: list[Any], feed: Callable[[dict[str, Any]], Any], offset: int | None) -> int | None:
    """Each update of a batch to `feed`, in order; the offset that confirms them. What has no id
    (`update_id`) is not an update: skipped, whichever way the batch was read."""
    for update in batch:
        found = update_id(update)
        if found is not None:
            offset = found + 1
            feed(update)
    return offset


class _Aiogram:
    """The parts of aiogram the bot uses, imported on first use (see the module docstring)."""

    def __init__(self) -> None:
        from aiogram import exceptions
        from aiogram.types import BotCommand

        from protocols.telegram import methods

        self.errors = exceptions
        self._command = BotCommand
        self.updates, self.send, self.edit = methods.Updates, methods.Send, methods.EditText

    def bot(self, token: str, api_url: str) -> Any:
        from aiogram import Bot
        from aiogram.client.session.aiohttp import AiohttpSession
        from aiogram.client.telegram import TelegramAPIServer

        session = AiohttpSession(api=TelegramAPIServer.from_base(api_url))
        return Bot(token, session=session)

    def command(self, name: str, description: str) -> Any:
        return self._command(command=name, description=description)


def keyboard(rows: list[list[dict[str, str]]] | None) -> dict[str, Any] | None:
    """An inline keyboard's JSON (`InlineKeyboardMarkup`), from the outbox's buttons."""
    if not rows:
        return None
    return {
        "inline_keyboard": [[{"text": b["text"], "callback_data": b["data"]} for b in row] for row in rows]
    }


def describe(err: BaseException) -> str:
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    return logs.redact(f"{type(err).__name__}: {message}")
