"""redis-py clients for the config's Redis URLs (`gateway.redis_url` parses them)."""

from __future__ import annotations

from typing import Any

from gateway.redis_url import parse_sentinel


def redis_client(url: str, *, asynchronous: bool = True, **options: Any) -> Any:
    """A redis-py client for the URL (for a Sentinel URL, one that follows the master)."""
    if asynchronous:
        import redis.asyncio as redis
        from redis.asyncio.sentinel import Sentinel
    else:
        import redis  # type: ignore[no-redef]
        from redis.sentinel import Sentinel  # type: ignore[assignment]

    sentinel = parse_sentinel(url)
    if sentinel is None:
        return redis.Redis.from_url(url, **options)
    watchers = Sentinel(sentinel.sentinels, socket_connect_timeout=options.get("socket_connect_timeout", 5))
    return watchers.master_for(sentinel.master, db=sentinel.db, password=sentinel.password, **options)
