"""The Redis channel layer (channels_redis), counting what it drops and renewing memberships.

A module of its own, so that a process on the in-memory layer never imports channels_redis or redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import BlockingConnectionPool

from gateway.layers import _channels_redis
from gateway.layers._channels_redis import RedisChannelLayer
from gateway.layers.memory import CountsFull, overflowed
from gateway.ops import logs
from protocols.backoff import Backoff

# How long a claim (RedisLayer.claim) holds: far longer than any redelivery.
CLAIM_SECONDS = 3600.0


# channels_redis reports a group send's full channels only in a log line: counted from it.
_channels_redis.count_overflows(overflowed)


class RedisLayer(CountsFull, RedisChannelLayer):
    """channels_redis, plus: memberships of this process renewed before Redis forgets them.

    channels_redis drops a group member `group_expiry` (a day) after it joined, so
    that a dead process's channels do not stay forever. Consumers that live longer
    (a Telegram chat, the site's MQTT publisher, a sensor) would silently stop
    hearing alerts; this process re-joins what it still holds, a few times per expiry.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._joined: set[tuple[str, str]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._renew_now = asyncio.Event()
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()  # every pool of every loop's connections
        # Called once memberships are back after an outage (the dashboard sockets start afresh).
        self.recovered: list[Callable[[], Awaitable[None]]] = []

    def create_pool(self, index: int) -> Any:
        # redis-py's default pool refuses a command once 100 connections are busy ("Too many
        # connections"): a thousand dashboards joining at once did that. This one waits instead.
        host = dict(self.hosts[index])
        address = host.pop("address", None)
        if address is None:
            pool = super().create_pool(index)  # Sentinel: channels_redis's own pool
        else:
            pool = BlockingConnectionPool.from_url(address, max_connections=POOL_SIZE, timeout=30, **host)
        self._pools.add(pool)
        return pool

    async def group_add(self, group: str, channel: str) -> None:
        await super().group_add(group, channel)
        self._joined.add((group, channel))
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew())

    async def group_discard(self, group: str, channel: str) -> None:
        self._joined.discard((group, channel))
        await super().group_discard(group, channel)

    async def _renew(self) -> None:
        outage = False
        while self._joined:
            # Often enough that a Redis that lost its data has every member back within minutes;
            # every second while a receive has failed, until they are back.
            with contextlib.suppress(TimeoutError):
                wait = 1.0 if outage else min(self.group_expiry / 4, RENEW_SECONDS)
                await asyncio.wait_for(self._renew_now.wait(), wait)
            if self._renew_now.is_set():
                self._renew_now.clear()
                await asyncio.sleep(1.0)  # not in the instant a receive failed
                # An outage is Redis having lost our memberships (it restarted, or we could not
                # ask it); a passing error of one receive is not.
                outage = outage or not await self._memberships_intact()
            try:
                for group, channel in list(self._joined):
                    await super().group_add(group, channel)
            except Exception as err:  # Redis away: try again soon, well within the expiry
                if not outage:
                    logs.layer.warning("could not renew group memberships (%s); retrying", err)
                outage = True
                continue
            if outage:
                logs.layer.info("redis is back: %d group memberships renewed", len(self._joined))
                await self._drop_connections()
                for callback in self.recovered:
                    try:
                        await callback()
                    except Exception:
                        logs.layer.exception("after the outage, %r failed", callback)
            outage = False

    async def claim(self, key: str, ttl: float = CLAIM_SECONDS) -> bool:
        """Whether this process is the first to claim `key` (SET NX, for `ttl` seconds).

        channels_redis may hand one message of a channel that several processes receive from to
        two of them (channels_redis#163: a receiver's clean-up puts back what another one has
        just taken). Work that must be done once, as publishing an alert event, claims it first.
        """
        connection = self.connection(self.consistent_hash(key))
        return bool(await connection.set(f"{self.prefix}claim:{key}", b"1", nx=True, ex=int(ttl)))

    async def group_members(self, group: str) -> list[str] | None:
        """The channels of a group that have not expired (peers send to the others only); None: not known."""
        key = _channels_redis.group_key(self, group)
        if key is None:
            return None
        connection = self.connection(self.consistent_hash(group))
        oldest = int(time.time()) - self.group_expiry
        members = await connection.zrangebyscore(key, min=oldest, max="+inf")
        return [m.decode("utf8") for m in members]

    async def _memberships_intact(self) -> bool:
        try:
            connection = self.connection(0)
            for group, channel in list(self._joined):
                key = _channels_redis.group_key(self, group)
                if key is None or await connection.zscore(key, channel) is None:
                    return False  # not known: taken as lost, and renewed
        except Exception:
            return False
        return True

    async def _drop_connections(self) -> None:
        """Close every pooled connection, the busy ones too, so each command starts on a fresh one.

        Seen here: after Redis restarted, a blocking pop that channels_redis issued
        around the restart waited forever on its connection, holding the receive
        lock of every consumer of this process. Its connection closed, it fails,
        is retried, and the receiving goes on; a message it had popped is safe in
        channels_redis's backup queue.
        """
        for pool in list(self._pools):
            with contextlib.suppress(Exception):
                await pool.disconnect(inuse_connections=True)

    async def receive(self, channel: str) -> dict[str, Any]:
        # A Redis outage must not end every consumer: wait and try again.
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                return await super().receive(channel)
            except Exception as err:  # redis.exceptions.* do not all derive from OSError
                if not isinstance(err, TimeoutError | ConnectionError | OSError) and (
                    type(err).__module__.split(".")[0] != "redis"
                ):
                    raise
                delay = backoff.next()
                allowed, held = _receive_log.allow("receive")
                if allowed:
                    logs.layer.warning(
                        "redis receive failed (%s); retrying in %.1fs (%d more not logged)", err, delay, held
                    )
            # Redis may come back without our memberships (a restart that lost its data):
            # the renewer tries every second until they are back.
            self._renew_now.set()
            await asyncio.sleep(delay)


RENEW_SECONDS = 600.0
POOL_SIZE = 200
_receive_log = logs.RateLimit(interval=5.0)
