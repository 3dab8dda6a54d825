"""Who polls: Telegram answers 409 to a second getUpdates consumer of one token.

`Lease` is the single-process case: always held. `RedisLease` elects one holder
among processes sharing a Redis: a key with a time-to-live, renewed by its holder
every `ttl / 3` seconds (redis-py's `Lock`, which checks the holder's token on
every renewal). The others try every `retry` seconds, so when the holder dies
without releasing, one of them takes over within `ttl + retry` seconds, and at
once when it stops cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import Any

from gateway.ops import logs

log = logs.telegram

__all__ = ["Lease", "RedisLease"]


class Lease:
    """Held by this process alone; `lost` is never set."""

    holder = f"{socket.gethostname()}:{os.getpid()}"

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        # Called when this process starts standing by for another holder.
        self.on_standby: Callable[[], None] = lambda: None

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until held (True) or `stop` is set (False)."""
        self.lost.clear()
        return not stop.is_set()

    async def release(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisLease(Lease):
    def __init__(self, connect: Callable[..., Any], key: str, ttl: float = 5.0, retry: float = 1.0) -> None:
        """`connect(**options)`: a redis-py asyncio client of the shared Redis, made on first use."""
        super().__init__()
        self.connect, self.key, self.ttl, self.retry = connect, key, ttl, retry
        self._redis: Any = None
        self._lock: Any = None
        self._renewer: asyncio.Task[None] | None = None
        self._complained = False

    async def acquire(self, stop: asyncio.Event) -> bool:
        import redis.asyncio as aioredis

        if self._redis is None:
            self._redis = self.connect(socket_timeout=self.ttl, socket_connect_timeout=2)
            self._lock = self._redis.lock(self.key, timeout=self.ttl, blocking=False, thread_local=False)
        stop_wait = asyncio.ensure_future(stop.wait())
        announced = False
        try:
            while not stop.is_set():
                try:
                    if await self._lock.acquire(blocking=False):
                        break
                    if not announced:
                        log.info("another process runs the Telegram bot; standing by")
                        self.on_standby()
                        announced = True
                    self._complained = False
                except (OSError, aioredis.RedisError) as err:
                    if not self._complained:
                        log.warning("poller election: Redis unreachable (%s); retrying", err)
                        self._complained = True
                await asyncio.wait([stop_wait], timeout=self.retry)
            else:
                return False
        finally:
            stop_wait.cancel()
        self.lost.clear()
        self._renewer = asyncio.ensure_future(self._renew())
        return True

    async def _renew(self) -> None:
        import redis.asyncio as aioredis

        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await asyncio.wait_for(self._lock.reacquire(), self.ttl / 3)
            except (OSError, TimeoutError, aioredis.RedisError) as err:
                log.warning("lost the Telegram poller lease (%s); standing by", err or type(err).__name__)
                self.lost.set()
                return

    async def release(self) -> None:
        import redis.asyncio as aioredis

        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        if self._lock is not None and not self.lost.is_set():
            with contextlib.suppress(OSError, TimeoutError, aioredis.RedisError):
                await asyncio.wait_for(self._lock.release(), 2.0)

    async def close(self) -> None:
        await self.release()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None
