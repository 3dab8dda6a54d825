"""Redis URLs of the config (parsed here, with the standard library only; clients are made by
`gateway.layers.clients`): `redis://`, `rediss://`, `unix://`, and `redis+sentinel://` (Sentinel).

`redis+sentinel://[:password@]host1:26379,host2:26379/<master name>[/<db>]`: the
sentinels say which server is the master, and clients follow it after a failover.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")


@dataclass(frozen=True)
class SentinelUrl:
    master: str
    sentinels: list[tuple[str, int]] = field(default_factory=list)
    db: int = 0
    password: str | None = None


def is_redis(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


def parse_sentinel(url: str) -> SentinelUrl | None:
    """The parts of a `redis+sentinel://` URL (ValueError when malformed); None for other URLs."""
    parts = urlsplit(url)
    if parts.scheme != "redis+sentinel":
        return None
    auth, _, hosts = parts.netloc.rpartition("@")
    password = unquote(auth.partition(":")[2]) if auth else None
    sentinels = []
    for host in hosts.split(","):
        name, sep, port = host.rpartition(":")
        if not sep or not name or not port.isdigit():
            raise ValueError(f"sentinel address {host!r} must look like HOST:PORT")
        sentinels.append((name.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("a redis+sentinel:// URL ends in /<master name> or /<master name>/<db>")
    return SentinelUrl(path[0], sentinels, int(path[1]) if len(path) == 2 else 0, password or None)


def layer_host(url: str, **options: Any) -> dict[str, Any]:
    """One entry of channels_redis's `hosts`."""
    sentinel = parse_sentinel(url)
    if sentinel is None:
        return {"address": url, **options}
    return {
        "master_name": sentinel.master,
        "sentinels": sentinel.sentinels,
        "db": sentinel.db,
        "password": sentinel.password,
        "sentinel_kwargs": {"socket_connect_timeout": options.get("socket_connect_timeout", 5)},
        **options,
    }


def label(url: str) -> str:
    """The URL without its password, for logs and `gateway check`."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
