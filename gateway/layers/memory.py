"""Channel layers that count what they drop: a full channel is logged and counted, never silent.

The Redis layer is in `gateway.layers.redis`: channels_redis and redis-py cost about 5 MiB of
RSS, which a process on the in-memory layer does not pay.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer

from gateway.layers import _channels
from gateway.ops import logs, metrics

_limit = logs.RateLimit(interval=10.0)
# Valid group names remembered, at most: a site's groups are its zones', sensors' and rules'.
VALID_GROUPS_KEPT = 10_000


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
    most once a second (through the parent's internals: gateway.layers._channels). A full
    channel is counted and logged, never skipped in silence.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._swept = 0.0
        self._direct: dict[str, Callable[[dict[str, Any]], None]] = {}
        # Group names already found valid (a regular expression each time otherwise): the config's.
        self._valid_groups: set[str] = set()

    def listen(self, channel: str, take: Callable[[dict[str, Any]], None]) -> bool:
        """Group messages to `channel` handed to `take` in the sender's call, with no queue and no
        task to wake (consumers.dashboard's Hub: the frame is written before the sender goes on).
        `take` must not raise, block or keep the sender. False: this layer cannot (channels
        without the internals), receive instead."""
        if not _channels.FAST:
            return False
        self._direct[channel] = take
        return True

    def unlisten(self, channel: str) -> None:
        self._direct.pop(channel, None)

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._swept >= 1.0:
            self._swept = now
            _channels.clean_expired(self)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        # Not copied, as group messages are not: the gateway's messages are built once and only read.
        if not _channels.FAST:
            await super().send(channel, message)
            return
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        self._sweep()
        if not _channels.put_one(self, channel, message):
            overflowed(channel, 1)
            raise ChannelFull(channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        if not _channels.FAST:
            await super().group_send(group, message)  # a copy for each member (each full one counted)
            return
        assert isinstance(message, dict), "Message is not a dict"
        if group not in self._valid_groups:
            self.require_valid_group_name(group)
            if len(self._valid_groups) < VALID_GROUPS_KEPT:
                self._valid_groups.add(group)
        self._sweep()
        dropped = _channels.put_shared(self, group, message, self._direct)
        if dropped:
            overflowed(group, dropped)

    async def group_members(self, group: str) -> list[str] | None:
        """The channels of a group (gateway.layers.peers sends to the others only); None: not known."""
        return _channels.members(self, group) if _channels.FAST else None

    async def receive(self, channel: str) -> dict[str, Any]:
        # The parent's, with the sweep at most once a second instead of on every call.
        if not _channels.FAST:
            return await super().receive(channel)  # type: ignore[no-any-return]
        self.require_valid_channel_name(channel)
        self._sweep()
        # Awaited here, not in a coroutine of the fence's: one frame less on every receive.
        waiting = _channels.queue(self, channel)
        try:
            _, message = await waiting.get()
        finally:
            _channels.forget_if_empty(self, channel, waiting)
        return message  # type: ignore[no-any-return]
