"""The Telegram outbox in-process: limits, order, 429/403/5xx, the bounded queue.

These drive `Outbox` with a recording `perform` in place of the Bot API, with
tight limits so that they run in a fraction of a second; the same behaviour
against the Bot API stand-in over HTTP is in test_telegram.py.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import django
import pytest
from django.conf import settings

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

if not settings.configured:
    settings.configure(CHANNEL_LAYERS={}, INSTALLED_APPS=["gateway.store.apps.GatewayConfig"])
django.setup()

FAST = Limits(per_second=30, chat_interval=0.1, group_per_minute=20, margin=0.05, backoff_min=0.05)


class Api:
    """Records each request with its time; `faults[chat]` is a list of exceptions to raise first."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, int, str]] = []
        self.faults: dict[int, list[Exception]] = {}
        self.done: list[tuple[int, str, str, Any]] = []
        self.all_done = asyncio.Event()
        self.expected = 0
        self.arrived = asyncio.Condition()

    async def until(self, n: int) -> None:
        """Until `n` requests were made."""
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.requests) >= n), 5)

    async def perform(self, job: Job) -> int:
        self.requests.append((time.monotonic(), job.chat_id, job.params["text"]))
        async with self.arrived:
            self.arrived.notify_all()
        await asyncio.sleep(0)
        faults = self.faults.get(job.chat_id)
        if faults:
            raise faults.pop(0)
        return len(self.requests)

    def job(self, chat_id: int, text: str, owed: bool = False, stranger: bool = False) -> Job:
        self.expected += 1
        return Job(chat_id, "send_message", {"text": text}, done=self._done, owed=owed, stranger=stranger)

    def _done(self, job: Job, outcome: str, detail: Any) -> None:
        self.done.append((job.chat_id, job.params["text"], outcome, detail))
        if len(self.done) >= self.expected:
            self.all_done.set()


@pytest.fixture
async def run() -> AsyncIterator[Any]:
    tasks: list[asyncio.Task[None]] = []

    def start(api: Api, limits: Limits = FAST, counts: list[str] | None = None) -> Outbox:
        outbox = Outbox(api.perform, limits, count=(counts if counts is not None else []).append)
        tasks.append(asyncio.ensure_future(outbox.run()))
        return outbox

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_one_chat_in_order_and_spaced(run: Any) -> None:
    api = Api()
    outbox = run(api)
    for i in range(4):
        assert outbox.submit(api.job(7, f"m{i}"))
    await asyncio.wait_for(api.all_done.wait(), 5)
    assert [text for _, _, text in api.requests] == ["m0", "m1", "m2", "m3"]
    times = [at for at, _, _ in api.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= FAST.chat_interval
    assert outbox.depth == 0


async def test_chats_take_turns(run: Any) -> None:
    api = Api()
    outbox = run(api)
    for i in range(3):
        outbox.submit(api.job(1, f"a{i}"))
    for i in range(3):
        outbox.submit(api.job(2, f"b{i}"))
    await asyncio.wait_for(api.all_done.wait(), 5)
    # Chat 2 does not wait for chat 1's queue: its first message goes out second.
    assert [text for _, _, text in api.requests][:2] == ["a0", "b0"]


async def test_global_limit_over_any_second(run: Any) -> None:
    api = Api()
    limits = Limits(per_second=5, chat_interval=0.01, margin=0.01)
    outbox = run(api, limits)
    for chat in range(12):
        outbox.submit(api.job(chat, "x"))
    await asyncio.wait_for(api.all_done.wait(), 5)
    times = [at for at, _, _ in api.requests]
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t - start < 1.0) <= 5
    assert times[-1] - times[0] >= 2.0  # 12 at 5 per second


async def test_group_limit_per_minute(run: Any) -> None:
    api = Api()
    limits = Limits(per_second=30, chat_interval=0.0, group_per_minute=3, margin=0.0)
    outbox = run(api, limits)
    for i in range(4):
        outbox.submit(api.job(-100, f"g{i}"))
    outbox.submit(api.job(5, "private"))
    api.expected = 4  # the fourth group message waits a minute
    await asyncio.wait_for(api.all_done.wait(), 5)
    # Three to the group, then the private chat; the fourth group message waits a minute.
    assert sorted(text for _, _, text in api.requests) == ["g0", "g1", "g2", "private"]
    assert outbox.depth == 1


async def test_retry_after_pauses_then_delivers_once(run: Any) -> None:
    api = Api()
    api.faults[1] = [RetryAfter(0.2), RetryAfter(0.2), RetryAfter(0.2)]
    counts: list[str] = []
    outbox = run(api, FAST, counts)
    started = time.monotonic()
    outbox.submit(api.job(1, "alert"))
    await asyncio.wait_for(api.all_done.wait(), 5)
    assert [text for _, _, text in api.requests] == ["alert"] * 4
    assert api.done == [(1, "alert", "ok", 4)]
    assert time.monotonic() - started >= 0.6
    assert counts.count("retried") == 3 and counts.count("ok") == 1


async def test_chat_gone_drops_its_queue_only(run: Any) -> None:
    api = Api()
    api.faults[1] = [ChatGone("Forbidden: bot was blocked by the user")]
    counts: list[str] = []
    outbox = run(api, FAST, counts)
    for i in range(3):
        outbox.submit(api.job(1, f"a{i}"))
    outbox.submit(api.job(2, "b0"))
    await asyncio.wait_for(api.all_done.wait(), 5)
    outcomes = {(chat, text): outcome for chat, text, outcome, _ in api.done}
    assert outcomes == {(1, "a0"): "gone", (1, "a1"): "gone", (1, "a2"): "gone", (2, "b0"): "ok"}
    assert [text for _, chat, text in api.requests if chat == 1] == ["a0"]  # the others never went out
    assert counts.count("gone") == 1


async def test_transient_errors_back_off_and_keep_order(run: Any) -> None:
    api = Api()
    api.faults[1] = [Transient("ServerError: Bad Gateway"), Transient("ClientConnectorError")]
    counts: list[str] = []
    outbox = run(api, FAST, counts)
    outbox.submit(api.job(1, "first"))
    outbox.submit(api.job(1, "second"))
    await asyncio.wait_for(api.all_done.wait(), 5)
    assert [text for _, _, text in api.requests] == ["first", "first", "first", "second"]
    times = [at for at, _, _ in api.requests]
    assert times[2] - times[1] >= 2 * FAST.backoff_min  # doubled after the second failure
    assert [outcome for *_, outcome, _ in api.done] == ["ok", "ok"]
    assert counts.count("retried") == 2


async def test_rejected_is_reported_not_retried(run: Any) -> None:
    api = Api()
    api.faults[1] = [Rejected("Bad Request: message is too long")]
    outbox = run(api)
    outbox.submit(api.job(1, "x"))
    await asyncio.wait_for(api.all_done.wait(), 5)
    assert api.done == [(1, "x", "failed", "Bad Request: message is too long")]
    assert len(api.requests) == 1


async def test_queue_is_bounded(run: Any) -> None:
    api = Api()
    counts: list[str] = []
    outbox = Outbox(
        api.perform, Limits(stranger_replies=2), count=counts.append
    )  # not running: nothing drains
    assert outbox.submit(api.job(1, "a", stranger=True)) and outbox.submit(api.job(2, "b", stranger=True))
    assert not outbox.submit(api.job(3, "c", stranger=True))
    assert outbox.depth == 2 and counts == ["dropped"]


async def test_replies_never_take_the_room_of_alerts() -> None:
    api = Api()
    counts: list[str] = []
    limits = Limits(stranger_replies=5, stranger_chat_replies=2, allowed_chat_replies=8, max_owed=3)
    outbox = Outbox(api.perform, limits, count=counts.append)  # not running: nothing drains
    # Strangers: two replies per chat at most, five over every chat.
    taken = [
        outbox.submit(api.job(-chat, f"hi {i}", stranger=True)) for chat in range(1, 5) for i in range(3)
    ]
    assert taken == [True, True, False] * 2 + [True, False, False] + [False] * 3
    # Alerts have their own lane: the full reply lane takes none of its room.
    assert all(outbox.submit(api.job(7, f"alert {i}", owed=True)) for i in range(3))
    assert not outbox.submit(api.job(8, "alert 3", owed=True))
    assert outbox.depth == 8 and counts.count("dropped") == 8
    # Nor does it take an allowed chat's: eight commands at once all get their answer.
    assert all(outbox.submit(api.job(9, f"status {i}")) for i in range(8))
    assert outbox.depth == 16 and counts.count("dropped") == 8
    # An allowed chat has a bound all the same, of its own.
    assert not outbox.submit(api.job(9, "status 8"))
    assert outbox.depth == 16 and counts.count("dropped") == 9


async def test_an_alert_goes_before_the_replies_waiting(run: Any) -> None:
    api = Api()
    outbox = run(api, Limits(per_second=5, chat_interval=0.01, margin=0.01))
    for chat in range(1, 11):
        outbox.submit(api.job(-chat, "hi"))
    outbox.submit(api.job(7, "alert", owed=True))
    await asyncio.wait_for(api.all_done.wait(), 5)
    texts = [text for _, _, text in api.requests]
    assert texts.index("alert") <= 1, texts  # the first free turn, not after ten strangers


async def test_a_group_upgraded_to_a_supergroup_gets_its_messages_there(run: Any) -> None:
    api = Api()
    api.faults[-5] = [ChatMoved(-1005)]
    moves: list[tuple[int, int]] = []
    outbox = Outbox(api.perform, FAST, moved=lambda old, new: moves.append((old, new)))
    task = asyncio.ensure_future(outbox.run())
    try:
        for i in range(3):
            outbox.submit(api.job(-5, f"m{i}", owed=True))
        await asyncio.wait_for(api.all_done.wait(), 5)
    finally:
        task.cancel()
    assert moves == [(-5, -1005)]
    assert [(chat, text) for _, chat, text in api.requests] == [
        (-5, "m0"),
        (-1005, "m0"),
        (-1005, "m1"),
        (-1005, "m2"),
    ]
    assert [(chat, outcome) for chat, _, outcome, _ in api.done] == [(-1005, "ok")] * 3


def test_a_chat_seq_never_passes_an_alert_on_its_way_or_owed() -> None:
    # The outbox may refuse an alert after later events were handled (a catch-up hands several
    # over before any refusal is read): the chat's seq stays below it, so a restart sends it.
    from consumers.telegram import ChatConsumer  # needs Django's apps, loaded above

    chat = ChatConsumer()
    chat.sending, chat.owed_from = {10: "door", 12: "leak"}, None
    assert chat._upto(11) == 9 and chat._upto(5) == 5
    chat.sending.pop(10)
    assert chat._upto(13) == 11
    chat.owed_from = 8
    assert chat._upto(13) == 7
    chat.sending.clear()
    chat.owed_from = None
    assert chat._upto(13) == 13
