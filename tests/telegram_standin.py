"""A Telegram Bot API stand-in served over real HTTP on 127.0.0.1, for tests that drive real aiogram 3.

Point a bot at it with
``Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(standin.base_url)))``, or give
``base_url`` to a gateway subprocess. Requests arrive as ``POST {base}/bot{token}/{method}`` with
url-encoded or multipart form fields (aiogram's ``FormData``: nested values are JSON strings); a JSON body
works too. Answers are ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N, "description":
..., "parameters": {...}}`` with the real HTTP status, so aiogram raises the same exceptions as against
Telegram (429 → TelegramRetryAfter, 403 → TelegramForbiddenError, 400 → TelegramBadRequest,
409 → TelegramConflictError, 5xx → TelegramServerError, 401 → TelegramUnauthorizedError).

Users are simulated with :meth:`BotApiStandin.user_says` and :meth:`BotApiStandin.press_button`; the updates
are served by ``getUpdates`` (a real long poll) or, while a webhook is set, POSTed to the webhook. Faults are
injected with :meth:`BotApiStandin.fail` (``echo_url=True``: the error's description repeats the request's
path percent-encoded, ``:`` as ``%3A``, as an upstream error page may). A group is upgraded to a supergroup
with :meth:`BotApiStandin.migrate_chat`: from then on every send to the group is answered 400 with
``parameters.migrate_to_chat_id``, as Telegram does. Changing ``token`` makes every call with the old one
401, as a revoked token. Everything runs on the test's event loop; async use only.

Behaviour worth knowing: the bot's message ids count from 1 per chat, users' messages get ids from 1_000_001
so they never collide; an edit without ``reply_markup`` removes the keyboard (as in Telegram); a long poll
whose client hangs up is released at once (its ``calls`` entry keeps ``status`` None); setWebhook hands the
not yet fetched updates to the webhook, and an update whose webhook deliveries all fail (after
``webhook_retry_delays``) is dropped.

Rate-limit violations (``violations``) are counted on the ARRIVAL of every sendMessage / editMessageText
request with a valid token, faulted or not, because Telegram counts requests:

* ``"global"``: +1 for each request that makes the number of such requests in the last 1.0 s exceed 30.
* ``"chat"``: +1 for each request to a chat that arrives less than 1.0 s after the previous one to that chat.
* ``"group"``: for ``chat_id < 0``, +1 for each request that makes the number of requests to that chat in the
  last 60 s exceed 20.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Self
from urllib.parse import quote

import aiohttp
from aiohttp import web

Json = dict[str, Any]

NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)
POLL_CONFLICT = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
)
WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
FAULT_TEXT = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: POLL_CONFLICT,
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
# Form fields that stay strings; every other field is decoded as JSON when it parses (ints, bools, objects).
STRING_FIELDS = frozenset(
    "text caption url secret_token callback_query_id inline_message_id business_connection_id data "
    "description short_description name language_code ip_address parse_mode".split()
)
USER_MESSAGE_ID_BASE = 1_000_000  # user messages get ids far from the bot's (which count from 1 per chat)


MIGRATED = "Bad Request: group chat was upgraded to a supergroup chat"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        description: str | None = None,
        retry_after: int | None = None,
        *,
        migrate_to_chat_id: int | None = None,
        echo_url: bool = False,
    ) -> None:
        super().__init__(status, description)
        self.status = status
        phrases = {code.value: code.phrase for code in HTTPStatus}
        self.description = description or FAULT_TEXT.get(status) or phrases.get(status, "Error")
        self.retry_after = retry_after
        self.migrate_to_chat_id = migrate_to_chat_id
        self.echo_url = echo_url

    def body(self, path: str = "") -> Json:
        description = self.description
        if self.echo_url:
            description += f" (while requesting {quote(path, safe='/')})"
        body: Json = {"ok": False, "error_code": self.status, "description": description}
        parameters: Json = {}
        if self.retry_after is not None:
            parameters["retry_after"] = self.retry_after
        if self.migrate_to_chat_id is not None:
            parameters["migrate_to_chat_id"] = self.migrate_to_chat_id
        if parameters:
            body["parameters"] = parameters
        return body


class BotApiStandin:
    """A fake Bot API server for one bot; see the module docstring."""

    def __init__(
        self, token: str = "123456:TEST-token", username: str = "gateway_test_bot", bot_id: int = 123456
    ) -> None:
        self.token, self.username, self.bot_id = token, username, bot_id
        self.base_url = ""
        self.sent: list[Json] = []
        self.calls: list[Json] = []  # "status" stays None until answered (for ever if the client hung up)
        self.commands: list[Json] | None = None
        self.webhook: Json | None = None
        self.webhook_deliveries: list[Json] = []
        self.webhook_retry_delays: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 1.0, 2.0, 2.0, 3.0)
        self.violations: dict[str, int] = {"global": 0, "chat": 0, "group": 0}
        self.conflicts = 0
        self.updates: list[Json] = []  # every update ever produced, in order
        self._pending: list[Json] = []  # updates waiting for getUpdates
        self._garbage: list[Any] = []  # batch elements that are not updates (enqueue_garbage)
        self._garbage_left = 0  # how many more batches carry them
        self._webhook_queue: asyncio.Queue[Json] = asyncio.Queue()
        self._messages: dict[tuple[int, int], Json] = {}  # (chat_id, message_id) -> the bot's Message
        self._next_message_id: defaultdict[int, int] = defaultdict(lambda: 1)
        self._chats: dict[int, Json] = {}
        self.migrated: dict[int, int] = {}  # group -> the supergroup it became
        self._faults: list[Json] = []
        self._update_ids = itertools.count(1)
        self._user_message_ids = itertools.count(USER_MESSAGE_ID_BASE + 1)
        self._callback_ids = itertools.count(1)
        self._recent_all: deque[float] = deque()
        self._recent_by_chat: defaultdict[int, deque[float]] = defaultdict(deque)
        self._last_by_chat: dict[int, float] = {}
        self._polling = False
        self._closing = False
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None
        handlers: dict[str, Callable[[Json], Awaitable[Any]]] = {
            "getMe": self._get_me,
            "getUpdates": self._get_updates,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "deleteMessage": self._delete_message,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            **{name: self._true for name in ("answerCallbackQuery", "sendChatAction", "close", "logOut")},
        }
        self._methods = {name.lower(): (name, handler) for name, handler in handlers.items()}

    # ----------------------------------------------------------------------------------------- lifecycle
    async def start(self, port: int = 0) -> None:
        """Serve on 127.0.0.1: a free port by default, or ``port`` (e.g. to come back after a stop)."""
        self._closing = False
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # handler_cancellation: a client that hangs up (e.g. a killed gateway) releases its long poll at once.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._client = aiohttp.ClientSession()
        self._worker = asyncio.create_task(self._deliver_webhooks())

    async def stop(self) -> None:
        self._closing = True
        self._notify()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._worker, self._client, self._runner = None, None, None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------------ driving users
    def user_says(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        username: str | None = "alice",
        chat_type: str | None = None,
        title: str | None = None,
    ) -> Json:
        """Enqueue a message update from a user (delivered by getUpdates or the webhook); returns it."""
        known = self._chats.get(chat_id, {})
        chat: Json = {"id": chat_id, "type": chat_type or known.get("type") or _default_type(chat_id)}
        if chat["type"] == "private":
            chat["first_name"] = _first_name(username, chat_id)
            if username is not None:
                chat["username"] = username
        else:
            chat["title"] = title or known.get("title") or f"Group {abs(chat_id)}"
        self._chats[chat_id] = chat
        message: Json = {
            "message_id": next(self._user_message_ids),
            "date": int(time.time()),
            "chat": chat,
            "from": self._user(chat_id, user_id, username),
            "text": text,
        }
        if text.startswith("/"):
            command = text.split()[0]
            length = len(command.encode("utf-16-le")) // 2
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
        return self._enqueue({"message": message})

    def press_button(
        self,
        chat_id: int,
        message_id: int,
        data: str,
        *,
        user_id: int | None = None,
        username: str | None = "alice",
    ) -> Json:
        """Enqueue a callback_query for an inline button under the bot's message ``message_id``."""
        message = self._messages.get((chat_id, message_id))
        if message is None:
            raise LookupError(f"the bot has no message {message_id} in chat {chat_id}")
        callback = {
            "id": f"cbq-{next(self._callback_ids)}",
            "from": self._user(chat_id, user_id, username),
            "message": message,
            "chat_instance": f"ci{chat_id}",
            "data": data,
        }
        return self._enqueue({"callback_query": callback})

    def fail(
        self,
        method: str,
        status: int,
        count: int = 1,
        *,
        retry_after: int | None = None,
        description: str | None = None,
        chat_id: int | None = None,
        echo_url: bool = False,
    ) -> None:
        """Answer the next ``count`` calls of ``method`` (only to ``chat_id``, if given) with this error."""
        if status == 429 and retry_after is None:
            retry_after = 1
        if status == 429 and description is None:
            description = f"Too Many Requests: retry after {retry_after}"
        error = ApiError(status, description, retry_after, echo_url=echo_url)
        self._faults.append({"method": method.lower(), "chat_id": chat_id, "left": count, "error": error})

    def migrate_chat(self, group: int, supergroup: int, *, title: str | None = None) -> None:
        """Upgrade ``group`` to ``supergroup``: the service messages both get, and 400s for the old id."""
        title = title or self._chat(group).get("title") or f"Group {abs(group)}"
        self.migrated[group] = supergroup
        self._chats[supergroup] = {"id": supergroup, "type": "supergroup", "title": title}
        user = self._user(group, None, "carol")
        for chat, key, other in (
            (group, "migrate_to_chat_id", supergroup),
            (supergroup, "migrate_from_chat_id", group),
        ):
            message = {
                "message_id": next(self._user_message_ids),
                "date": int(time.time()),
                "chat": self._chat(chat),
                "from": user,
                key: other,
            }
            self._enqueue({"message": message})

    # ------------------------------------------------------------------------------------------ waiting
    @property
    def answered_callbacks(self) -> list[Json]:
        """Params of the answerCallbackQuery calls answered 200."""
        return [c["params"] for c in self.calls if c["method"] == "answerCallbackQuery" and _ok(c["status"])]

    async def wait_sent(self, n: int, timeout: float = 10.0, **match: Any) -> list[Json]:
        """Wait until at least ``n`` entries of ``sent`` match every ``key=value`` in ``match``."""

        def found() -> list[Json]:
            return [s for s in self.sent if all(s.get(k) == v for k, v in match.items())]

        return await self._wait(found, n, timeout, f"{n} sent {match}", lambda: self.sent)

    async def wait_answered(self, n: int = 1, timeout: float = 10.0) -> list[Json]:
        """Wait until at least ``n`` answerCallbackQuery calls were answered 200; their params."""
        return await self._wait(
            lambda: self.answered_callbacks, n, timeout, f"{n} answered callbacks", lambda: self.calls
        )

    async def wait_call(self, method: str, timeout: float = 10.0, n: int = 1) -> list[Json]:
        """Wait until at least ``n`` calls of ``method`` (any status, possibly still in flight) arrived."""

        def found() -> list[Json]:
            return [c for c in self.calls if c["method"].lower() == method.lower()]

        return await self._wait(found, n, timeout, f"{n} {method} calls", lambda: self.calls)

    async def wait_webhook_delivered(self, n: int = 1, timeout: float = 10.0) -> list[Json]:
        """Wait until at least ``n`` webhook deliveries were answered 2xx; returns those attempts."""

        def found() -> list[Json]:
            return [d for d in self.webhook_deliveries if _ok(d["status"])]

        return await self._wait(found, n, timeout, f"{n} webhook deliveries", lambda: self.webhook_deliveries)

    async def _wait(
        self, found: Callable[[], list[Json]], n: int, timeout: float, what: str, seen: Callable[[], Any]
    ) -> list[Json]:
        try:
            async with asyncio.timeout(timeout):
                while len(result := found()) < n:
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"no {what} after {timeout}s; got {seen()!r}") from None
        return result

    def _notify(self) -> None:
        """Wake every waiter; each re-checks its condition and waits on the fresh event."""
        self._changed.set()
        self._changed = asyncio.Event()

    # -------------------------------------------------------------------------------------------- HTTP
    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response(ApiError(404).body(), status=404)

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["method"]
        params = await self._params(request)
        call: Json = {
            "method": self._methods.get(name.lower(), (name,))[0],
            "params": params,
            "status": None,
            "at": time.monotonic(),
        }
        self.calls.append(call)
        self._notify()
        try:
            if request.match_info["token"] != self.token:
                raise ApiError(401)
            if call["method"] in ("sendMessage", "editMessageText"):
                self._count_violations(params.get("chat_id"), call["at"])
                if params.get("chat_id") in self.migrated:
                    raise ApiError(400, MIGRATED, migrate_to_chat_id=self.migrated[params["chat_id"]])
            self._check_faults(name.lower(), params.get("chat_id"))
            if name.lower() not in self._methods:
                raise ApiError(404)
            status, body = 200, {"ok": True, "result": await self._methods[name.lower()][1](params)}
        except ApiError as error:
            status, body = error.status, error.body(request.path)
        call["status"] = status
        self._notify()
        return web.json_response(body, status=status)

    @staticmethod
    async def _params(request: web.Request) -> Json:
        raw: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            raw.update(await request.json())
            return raw
        for key, value in (await request.post()).items():
            raw[key] = value if isinstance(value, str) else getattr(value, "filename", repr(value))
        for key, value in raw.items():
            if isinstance(value, str) and key not in STRING_FIELDS:
                with contextlib.suppress(ValueError):
                    raw[key] = json.loads(value)
        return raw

    def _check_faults(self, method: str, chat_id: Any) -> None:
        for fault in self._faults:
            if fault["method"] == method and fault["chat_id"] in (None, chat_id):
                fault["left"] -= 1
                if fault["left"] <= 0:
                    self._faults.remove(fault)
                raise fault["error"]

    def _count_violations(self, chat_id: Any, now: float) -> None:
        self._recent_all.append(now)
        while self._recent_all[0] <= now - 1.0:
            self._recent_all.popleft()
        if len(self._recent_all) > 30:
            self.violations["global"] += 1
        if not isinstance(chat_id, int):
            return
        last = self._last_by_chat.get(chat_id)
        if last is not None and now - last < 1.0:
            self.violations["chat"] += 1
        self._last_by_chat[chat_id] = now
        if chat_id < 0:
            recent = self._recent_by_chat[chat_id]
            recent.append(now)
            while recent[0] <= now - 60.0:
                recent.popleft()
            if len(recent) > 20:
                self.violations["group"] += 1

    # ----------------------------------------------------------------------------------------- methods
    async def _get_me(self, params: Json) -> Json:
        return {
            **self._bot_user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _get_updates(self, params: Json) -> list[Json]:
        if self.webhook is not None:
            raise ApiError(409, WEBHOOK_CONFLICT)
        if self._polling:
            self.conflicts += 1
            raise ApiError(409, POLL_CONFLICT)
        offset, limit = int(params.get("offset") or 0), int(params.get("limit") or 100)
        if offset < 0:
            self._pending = self._pending[offset:]
        elif offset > 0:
            self._pending = [u for u in self._pending if u["update_id"] >= offset]
        if self._garbage:  # first in the next batch or batches (enqueue_garbage)
            batch = [*self._garbage, *self._pending]
            self._garbage_left -= 1
            if not self._garbage_left:
                self._garbage = []
            return batch[: max(1, min(limit, 100))]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(params.get("timeout") or 0)
        self._polling = True
        try:
            while (
                not self._pending
                and not self._garbage
                and not self._closing
                and (left := deadline - loop.time()) > 0
            ):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
        finally:
            self._polling = False
        return self._pending[: max(1, min(limit, 100))]

    async def _send_message(self, params: Json) -> Json:
        chat_id, text = params.get("chat_id"), str(params.get("text") or "")
        if not isinstance(chat_id, int):
            raise ApiError(400, "Bad Request: chat not found")
        self._check_text(text)
        message_id = self._next_message_id[chat_id]
        self._next_message_id[chat_id] += 1
        message = self._store(chat_id, message_id, text, params.get("reply_markup"))
        self._record("sendMessage", params, message_id)
        return message

    async def _edit_message_text(self, params: Json) -> Json:
        chat_id, message_id = params.get("chat_id"), params.get("message_id")
        text = str(params.get("text") or "")
        old = self._messages.get((chat_id, message_id))
        if old is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        self._check_text(text)
        markup = params.get("reply_markup")
        if old["text"] == text and old.get("reply_markup") == _inline(markup):
            raise ApiError(400, NOT_MODIFIED)
        message = self._store(chat_id, message_id, text, markup, date=old["date"])
        message["edit_date"] = int(time.time())
        self._record("editMessageText", params, message_id)
        return message

    async def _delete_message(self, params: Json) -> bool:
        if self._messages.pop((params.get("chat_id"), params.get("message_id")), None) is None:
            raise ApiError(400, "Bad Request: message to delete not found")
        return True

    async def _set_my_commands(self, params: Json) -> bool:
        self.commands = list(params.get("commands") or [])
        return True

    async def _get_my_commands(self, params: Json) -> list[Json]:
        return self.commands or []

    async def _delete_my_commands(self, params: Json) -> bool:
        self.commands = None
        return True

    async def _set_webhook(self, params: Json) -> bool:
        if not params.get("url"):
            return await self._delete_webhook(params)
        self.webhook = dict(params)
        for update in self._pending:  # like Telegram: what getUpdates did not fetch goes to the webhook now
            self._webhook_queue.put_nowait(update)
        self._pending = []
        return True

    async def _delete_webhook(self, params: Json) -> bool:
        self.webhook = None
        if params.get("drop_pending_updates"):
            self._pending = []
        return True

    async def _get_webhook_info(self, params: Json) -> Json:
        hook = self.webhook or {}
        info: Json = {
            "url": hook.get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self._pending) + self._webhook_queue.qsize(),
        }
        if hook:
            info["max_connections"] = hook.get("max_connections", 40)
        return info

    async def _true(self, params: Json) -> bool:
        return True

    # ----------------------------------------------------------------------------------------- helpers
    @staticmethod
    def _check_text(text: str) -> None:
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            raise ApiError(400, "Bad Request: message is too long")

    def _store(self, chat_id: int, message_id: int, text: str, markup: Any, date: int | None = None) -> Json:
        message: Json = {
            "message_id": message_id,
            "date": date or int(time.time()),
            "chat": self._chat(chat_id),
            "from": self._bot_user(),
            "text": text,
        }
        if _inline(markup) is not None:  # a Message only ever carries an inline keyboard
            message["reply_markup"] = markup
        self._messages[(chat_id, message_id)] = message
        return message

    def _record(self, method: str, params: Json, message_id: int) -> None:
        entry = {
            "method": method,
            "chat_id": params.get("chat_id"),
            "text": params.get("text"),
            "message_id": message_id,
            "reply_markup": params.get("reply_markup"),
            "at": time.monotonic(),
            "params": params,
        }
        self.sent.append(entry)
        self._notify()

    def _bot_user(self) -> Json:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Gateway Bot", "username": self.username}

    def _chat(self, chat_id: int) -> Json:
        """The chat as the last user_says described it, or a plain default one."""
        if chat_id in self._chats:
            return self._chats[chat_id]
        kind = _default_type(chat_id)
        if kind == "private":
            return {"id": chat_id, "type": kind, "first_name": _first_name(None, chat_id)}
        return {"id": chat_id, "type": kind, "title": f"Group {abs(chat_id)}"}

    def _user(self, chat_id: int, user_id: int | None, username: str | None) -> Json:
        if user_id is None:
            user_id = chat_id if self._chat(chat_id)["type"] == "private" else 777
        user: Json = {"id": user_id, "is_bot": False, "first_name": _first_name(username, user_id)}
        if username is not None:
            user["username"] = username
        return user

    def enqueue_garbage(self, item: Any, *, batches: int = 1) -> None:
        """An element of the next getUpdates batch that is not an update object (Telegram never
        sends one; a broken proxy might), before the updates waiting. `batches`: served to that
        many getUpdates calls, as Telegram serves a batch again until an offset confirms it (2:
        the gateway's second read of a batch aiogram could not read gets it too)."""
        self._garbage.append(item)
        self._garbage_left = max(self._garbage_left, batches)
        self._notify()

    def _enqueue(self, body: Json) -> Json:
        update = {"update_id": next(self._update_ids), **body}
        self.updates.append(update)
        if self.webhook is not None:
            self._webhook_queue.put_nowait(update)
        else:
            self._pending.append(update)
        self._notify()
        return update

    async def _deliver_webhooks(self) -> None:
        """POST updates to the webhook one at a time, in order, retrying non-2xx answers like Telegram."""
        assert self._client is not None
        while True:
            update = await self._webhook_queue.get()
            for attempt, delay in enumerate((0.0, *self.webhook_retry_delays), start=1):
                await asyncio.sleep(delay)
                if self.webhook is None:  # deleted meanwhile: getUpdates serves it instead
                    self._pending.append(update)
                    self._notify()
                    break
                url, secret = self.webhook["url"], self.webhook.get("secret_token")
                headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
                record: Json = {"update_id": update["update_id"], "url": url, "attempt": attempt}
                try:
                    timeout = aiohttp.ClientTimeout(total=5)
                    async with self._client.post(url, json=update, headers=headers, timeout=timeout) as resp:
                        record.update(status=resp.status, error=None)
                except (aiohttp.ClientError, TimeoutError) as error:
                    record.update(status=None, error=f"{type(error).__name__}: {error}")
                record["at"] = time.monotonic()
                self.webhook_deliveries.append(record)
                self._notify()
                if _ok(record["status"]):
                    break


def _ok(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def _inline(markup: Any) -> Any:
    return markup if isinstance(markup, dict) and "inline_keyboard" in markup else None


def _default_type(chat_id: int) -> str:
    return "private" if chat_id > 0 else "supergroup"


def _first_name(username: str | None, user_id: int) -> str:
    return username.capitalize() if username else f"User{user_id}"
