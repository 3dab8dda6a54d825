"""Outgoing flow control for the Bot API: Telegram's limits, 429/403/5xx, a bounded queue.

aiogram sends whatever it is asked to, at once (aiogram#1875), and Telegram
answers floods with 429s and, eventually, a ban. Every send and edit therefore
goes through an `Outbox`:

- at most `per_second` requests in any window of one second, one per
  `chat_interval` to a chat, and `group_per_minute` to a group (chat id < 0) in
  any window of a minute. Windows are counted from when a request was
  *answered*, the latest moment Telegram can have received it, so that network
  jitter cannot squeeze two requests into one of Telegram's windows; requests
  in flight count as well. `margin` widens every window a little more;
- first in, first out within a chat (an edit never overtakes the send it edits),
  round-robin between chats, a chat whose next job is an alert before one whose
  next job is a reply, one request in flight per chat;
- `RetryAfter` (a 429) pauses every send for that long; the same job then goes
  out again, so it is delivered once;
- `ChatGone` (403, or 400 "chat not found") drops the chat's queued jobs and
  reports it once;
- `Transient` (network errors, 5xx, a refused token) puts the job back at the
  head of its chat and backs off, doubling up to `backoff_max`;
- `ChatMoved` (a group upgraded to a supergroup) re-addresses the chat's jobs
  to its new id, reports the move once, and sends the job again there;
- two lanes: jobs the application is `owed` an outcome for (alerts) and plain
  replies. Replies to strangers (chats not allowed) are bounded by `stranger_replies`
  overall and `stranger_chat_replies` per chat, so that strangers writing to the bot take
  the room of neither an alert nor a reply to an allowed chat; an allowed chat's
  replies are bounded by `allowed_chat_replies`; owed jobs have `max_owed` of
  their own. A job that does not fit is refused at
  once, and the application keeps an owed one to send later.

The outbox knows nothing of aiogram: `perform(job)` does the request and raises
one of the exceptions below.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.ops import logs
from protocols.backoff import Backoff

log = logs.telegram

__all__ = ["ChatGone", "ChatMoved", "Job", "Limits", "Outbox", "Rejected", "RetryAfter", "Transient"]


class RetryAfter(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"retry after {seconds}s")
        self.seconds = seconds


class ChatGone(Exception):
    """The chat cannot receive messages: the bot was blocked or removed, or the chat does not exist."""


class ChatMoved(Exception):
    """The group was upgraded to a supergroup: the same chat now has the id `to`."""

    def __init__(self, to: int) -> None:
        super().__init__(f"the group is now the supergroup {to}")
        self.to = to


class Transient(Exception):
    """A network error or a 5xx: the request may succeed later."""


class Rejected(Exception):
    """Telegram refused this one request (a 400); sending it again would not help."""


@dataclass(frozen=True)
class Limits:
    per_second: int = 30
    chat_interval: float = 1.0
    group_per_minute: int = 20
    margin: float = 0.05
    stranger_replies: int = 2000  # replies to strangers waiting, over every chat
    stranger_chat_replies: int = 4  # replies waiting for one stranger's chat
    allowed_chat_replies: int = 100  # replies waiting for one allowed chat
    max_owed: int = 20_000  # owed jobs (alerts) waiting
    max_in_flight: int = 8
    backoff_min: float = 0.5
    backoff_max: float = 30.0


@dataclass(eq=False)
class Job:
    chat_id: int
    method: str  # "send_message" | "edit_message"
    params: dict[str, Any]
    # Called once with ("ok", result), ("gone", reason) or ("failed", error); by the server, with
    # ("full", reason) for a job the outbox did not take.
    done: Callable[[Job, str, Any], None] = lambda job, outcome, detail: None
    owed: bool = False  # the application tracks its outcome: the alerts' lane, not the replies'
    stranger: bool = False  # a reply to a chat that is not allowed: bounded the tightest
    attempts: int = 0
    queued_at: float = field(default_factory=time.monotonic)


class Outbox:
    def __init__(
        self,
        perform: Callable[[Job], Awaitable[Any]],
        limits: Limits | None = None,
        *,
        count: Callable[[str], None] = lambda outcome: None,
        moved: Callable[[int, int], None] = lambda old, new: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.perform = perform
        self.limits = limits or Limits()
        self.count = count
        self.moved = moved
        self.clock = clock
        self._chats: OrderedDict[int, deque[Job]] = OrderedDict()
        self._size = 0
        self._owed = 0  # of `_size`, in the owed lane
        self._stranger_replies = 0  # of `_size`, replies to strangers
        self._chat_replies: dict[int, int] = {}  # replies waiting, per chat (chats with none left out)
        self._busy: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._answered: deque[float] = deque()  # when recent requests were answered, oldest first
        self._chat_last: dict[int, float] = {}
        self._group_sent: dict[int, deque[float]] = {}
        self._paused_until = 0.0
        self._backoff = Backoff(self.limits.backoff_min, self.limits.backoff_max)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    # What the server calls

    @property
    def depth(self) -> int:
        """Jobs waiting or in flight."""
        return self._size + len(self._busy)

    def submit(self, job: Job) -> bool:
        """Queue a job; False when its lane is full (the job is not taken)."""
        lim = self.limits
        if job.owed:
            full = self._owed >= lim.max_owed
        elif job.stranger:
            waiting = self._chat_replies.get(job.chat_id, 0)
            full = self._stranger_replies >= lim.stranger_replies or waiting >= lim.stranger_chat_replies
        else:
            full = self._chat_replies.get(job.chat_id, 0) >= lim.allowed_chat_replies
        if full:
            self.count("dropped")
            return False
        self._chats.setdefault(job.chat_id, deque()).append(job)
        self._counted(job, 1)
        self._idle.clear()
        self._wake.set()
        return True

    def _counted(self, job: Job, n: int) -> None:
        """Count `n` (1 or -1) of this job in its lane."""
        self._size += n
        if job.owed:
            self._owed += n
            return
        if job.stranger:
            self._stranger_replies += n
        left = self._chat_replies.get(job.chat_id, 0) + n
        if left:
            self._chat_replies[job.chat_id] = left
        else:
            del self._chat_replies[job.chat_id]

    async def drain(self, timeout: float) -> bool:
        """Wait until everything queued was sent or given up, at most `timeout` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def run(self) -> None:
        """Send until cancelled; cancelling also cancels the requests in flight."""
        try:
            while True:
                now = self.clock()
                if self._paused_until > now:
                    await self._sleep(self._paused_until - now)
                    continue
                if len(self._busy) >= self.limits.max_in_flight:
                    await self._sleep(None)
                    continue
                job, wait = self._pick(now)
                if job is None:
                    await self._sleep(wait)
                    continue
                self._launch(job, now)
        finally:
            for task in list(self._tasks):
                task.cancel()

    # Scheduling

    def _pick(self, now: float) -> tuple[Job | None, float | None]:
        lim = self.limits
        window = 1.0 + lim.margin
        while self._answered and self._answered[0] <= now - window:
            self._answered.popleft()
        if len(self._busy) + len(self._answered) >= lim.per_second:
            # Free when the oldest answered request leaves the window, or when one in flight is answered.
            return None, (self._answered[0] + window - now) if self._answered else None
        soonest: float | None = None
        reply: int | None = None  # the first chat ready with a reply: taken if no alert is ready
        for chat_id, jobs in self._chats.items():
            if chat_id in self._busy:
                continue
            ready_at = self._ready_at(chat_id)
            if ready_at <= now:
                if jobs[0].owed:
                    return self._take(chat_id, jobs), None
                if reply is None:
                    reply = chat_id
                    if not self._owed:
                        break
            else:
                soonest = ready_at if soonest is None else min(soonest, ready_at)
        if reply is not None:
            return self._take(reply, self._chats[reply]), None
        return None, None if soonest is None else soonest - now

    def _take(self, chat_id: int, jobs: deque[Job]) -> Job:
        job = jobs.popleft()
        self._counted(job, -1)
        if jobs:
            self._chats.move_to_end(chat_id)  # round-robin between chats
        else:
            del self._chats[chat_id]
        return job

    def _ready_at(self, chat_id: int) -> float:
        lim = self.limits
        last = self._chat_last.get(chat_id)
        ready = 0.0 if last is None else last + lim.chat_interval + lim.margin
        if chat_id < 0:
            sent = self._group_sent.get(chat_id)
            if sent is not None and len(sent) >= lim.group_per_minute:
                ready = max(ready, sent[0] + 60.0 + lim.margin)
        return ready

    def _launch(self, job: Job, now: float) -> None:
        if len(self._chat_last) > 4 * self.limits.stranger_replies:
            self._forget(now)
        self._busy.add(job.chat_id)
        job.attempts += 1
        task = asyncio.ensure_future(self._attempt(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, now: float) -> None:
        # Chats idle for over a minute no longer constrain anything.
        self._chat_last = {c: t for c, t in self._chat_last.items() if now - t < 61.0}
        self._group_sent = {c: s for c, s in self._group_sent.items() if s and now - s[-1] < 61.0}

    async def _sleep(self, seconds: float | None) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    # Outcomes

    def _answered_now(self, chat_id: int) -> None:
        now = self.clock()
        self._answered.append(now)
        self._chat_last[chat_id] = now
        if chat_id < 0:
            self._group_sent.setdefault(chat_id, deque(maxlen=self.limits.group_per_minute)).append(now)

    async def _attempt(self, job: Job) -> None:
        try:
            try:
                result = await self.perform(job)
            finally:
                self._answered_now(job.chat_id)
        except RetryAfter as err:
            self.count("retried")
            self._paused_until = max(self._paused_until, self.clock() + err.seconds)
            log.warning("Telegram asks to slow down (429): pausing sends for %ss", err.seconds)
            self._requeue(job)
        except Transient as err:
            self.count("retried")
            delay = self._backoff.next()
            self._paused_until = max(self._paused_until, self.clock() + delay)
            log.warning(
                "sending to chat %s failed (%s, attempt %d); retrying in %.1fs",
                job.chat_id,
                logs.redact(str(err)),
                job.attempts,
                delay,
            )
            self._requeue(job)
        except ChatMoved as err:
            self.count("moved")
            self._move(job, err.to)
        except ChatGone as err:
            self.count("gone")
            dropped = self._chats.pop(job.chat_id, deque())
            for other in dropped:
                self._counted(other, -1)
            self._finish(job)
            log.warning("chat %s is gone (%s); %d queued messages dropped", job.chat_id, err, len(dropped))
            job.done(job, "gone", str(err))
            for other in dropped:
                other.done(other, "gone", str(err))
        except Rejected as err:
            self.count("failed")
            self._finish(job)
            log.warning("Telegram refused a %s to chat %s: %s", job.method, job.chat_id, err)
            job.done(job, "failed", str(err))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.count("failed")
            self._finish(job)
            log.exception("a %s to chat %s failed", job.method, job.chat_id)
            job.done(job, "failed", logs.redact(repr(err)))
        else:
            self.count("ok")
            self._backoff.reset()
            self._finish(job)
            job.done(job, "ok", result)

    def _requeue(self, job: Job) -> None:
        # Back at the head of its chat: order within a chat holds across retries.
        self._busy.discard(job.chat_id)
        self._chats.setdefault(job.chat_id, deque()).appendleft(job)
        self._chats.move_to_end(job.chat_id, last=False)
        self._counted(job, 1)
        self._wake.set()

    def _move(self, job: Job, to: int) -> None:
        old = job.chat_id
        self._busy.discard(old)
        waiting = self._chats.pop(old, deque())
        for other in waiting:
            self._counted(other, -1)
        log.info("chat %s was upgraded to the supergroup %s: its messages go there now", old, to)
        self.moved(old, to)
        for other in (job, *waiting):
            other.chat_id = to
        self._requeue(job)
        for other in waiting:
            self._chats[to].append(other)
            self._counted(other, 1)

    def _finish(self, job: Job) -> None:
        self._busy.discard(job.chat_id)
        if not self._size and not self._busy:
            self._idle.set()
        self._wake.set()
