"""Channel layers that count what they drop: a full channel is logged and counted, never silent.

The Redis layer is in `gateway.layers.redis`: channels_redis and redis-py cost about 5 MiB of
RSS, which a process on the in-memory layer does not pay.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer

from gateway.ops import logs, metrics

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


class CountsFull:
    """A layer whose `send` to a full channel is counted and logged before ChannelFull is raised."""

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        try:
            await super().send(channel, message)  # type: ignore[misc]
        except ChannelFull:
            overflowed(channel, 1)
            raise


class MemoryLayer(CountsFull, InMemoryChannelLayer):
    """channels' in-memory layer without its per-member costs, and counting what it drops.

    The parent deep-copies a group message for every member and walks every
    channel and member for expiry on every send and receive: with 1,000 dashboards
    one alert cost about a second of CPU. Here a group message is shared by its
    members (consumers must not change what they receive) and expiry is swept at
    most once a second. A full channel is counted and logged, never skipped in silence.
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
            queue = self.channels.setdefault(channel, asyncio.Queue(maxsize=self.get_capacity(channel)))
            try:
                queue.put_nowait(entry)
            except asyncio.QueueFull:
                dropped += 1
        if dropped:
            overflowed(group, dropped)

    async def group_members(self, group: str) -> list[str]:
        """The channels of a group (gateway.layers.peers sends to the others, not to itself)."""
        return list(self.groups.get(group, ()))

    async def receive(self, channel: str) -> dict[str, Any]:
        # The parent's, with the sweep at most once a second instead of on every call.
        self.require_valid_channel_name(channel)
        self._sweep()
        queue = self.channels.setdefault(channel, asyncio.Queue(maxsize=self.get_capacity(channel)))
        try:
            _, message = await queue.get()
        finally:
            if queue.empty():
                self.channels.pop(channel, None)
        return message  # type: ignore[no-any-return]
