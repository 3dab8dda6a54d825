"""Channel layers that count what they drop: a full channel is logged and counted, never silent.

The Redis layer is in `gateway.redis_layer`: channels_redis and redis-py cost about 5 MiB of
RSS, which a process on the in-memory layer does not pay.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from copy import deepcopy
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer

from gateway import logs, metrics

_limit = logs.RateLimit(interval=10.0)


def overflowed(group_or_channel: str, dropped: int) -> None:
    metrics.layer_overflows.inc(dropped)
    allowed, held = _limit.allow(group_or_channel)
    if allowed:
        logs.layer.warning(
            "channel layer full: dropped %d message(s) for %s (%d more drops not logged)",
            dropped,
            group_or_channel,
            held,
        )


class Inbox:
    """One channel's messages: what `asyncio.Queue` does here, at a fraction of its memory.

    An idle consumer waits on its channel for as long as its socket is open; an asyncio.Queue
    (four deques, about 3 KiB) per waiting channel was a tenth of an idle dashboard's memory.
    Here the messages get a deque only while there are some, and the waiters are a short list.
    """

    __slots__ = ("_items", "_waiters", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[tuple[float, dict[str, Any]]] | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self._items) if self._items else 0

    @property
    def idle(self) -> bool:
        """Nothing queued and nobody waiting: the channel can be forgotten."""
        return not self._items and not self._waiters

    def put(self, entry: tuple[float, dict[str, Any]]) -> bool:
        """Queue `entry` (expiry, message); False when the channel is full."""
        if self._items is None:
            self._items = deque()
        elif len(self._items) >= self.maxsize > 0:
            return False
        self._items.append(entry)
        self._wake()
        return True

    def expire(self, now: float) -> int:
        """Drop the messages that expired before `now`; how many."""
        items, dropped = self._items, 0
        while items and items[0][0] < now:
            items.popleft()
            dropped += 1
        if items is not None and not items:
            self._items = None
        return dropped

    async def get(self) -> tuple[float, dict[str, Any]]:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                if self._items and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: the message is the next waiter's
                raise
        entry = self._items.popleft()
        if not self._items:
            self._items = None
        elif self._waiters:
            self._wake()
        return entry

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return


class MemoryLayer(InMemoryChannelLayer):
    """channels' in-memory layer without its per-member costs, and counting what it drops.

    The parent deep-copies a group message for every member and walks every
    channel and member for expiry on every send and receive: with 1,000 dashboards
    one alert cost about a second of CPU. Here a group message is shared by its
    members (consumers must not change what they receive) and expiry is swept at
    most once a second. A full channel is counted and logged, never skipped in silence. A
    channel's messages wait in an `Inbox`, not an asyncio.Queue (about 3 KiB less per channel).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._swept = 0.0

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._swept >= 1.0:
            self._swept = now
            self._clean_expired()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._sweep()
        entry = (time.time() + self.expiry, message)
        dropped = 0
        for channel in list(self.groups.get(group, ())):
            if not self._inbox(channel).put(entry):
                dropped += 1
        if dropped:
            overflowed(group, dropped)

    def _inbox(self, channel: str) -> Inbox:
        inbox = self.channels.get(channel)
        if inbox is None:
            inbox = self.channels[channel] = Inbox(self.get_capacity(channel))
        return inbox

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        # The parent's, on an Inbox: the message is copied (a group message is shared, above).
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        assert "__asgi_channel__" not in message
        if not self._inbox(channel).put((time.time() + self.expiry, deepcopy(message))):
            overflowed(channel, 1)
            raise ChannelFull(channel)

    async def receive(self, channel: str) -> dict[str, Any]:
        # The parent's, with the sweep at most once a second instead of on every call.
        self.require_valid_channel_name(channel)
        self._sweep()
        inbox = self._inbox(channel)
        try:
            _, message = await inbox.get()
        finally:
            if inbox.idle and self.channels.get(channel) is inbox:
                del self.channels[channel]
        return message

    def _clean_expired(self) -> None:
        # The parent's, on Inboxes: a channel with an expired message leaves every group.
        now = time.time()
        for channel, inbox in list(self.channels.items()):
            if inbox.expire(now):
                self._remove_from_groups(channel)
            if inbox.idle:
                self.channels.pop(channel, None)
        timeout = int(now) - self.group_expiry
        for members in self.groups.values():
            for name, joined in list(members.items()):
                if joined and joined < timeout:
                    members.pop(name, None)
