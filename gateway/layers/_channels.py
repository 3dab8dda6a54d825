"""channels' in-memory layer through its internals, in one place (checked on channels 4.3.2).

`InMemoryChannelLayer` keeps every channel's queue of `(expiry, message)` in `channels`, every
group's members in `groups`, and sweeps what expired in `_clean_expired` on every send and
receive. gateway.layers.memory shares one group message among the members and sweeps at most
once a second, through the functions here. `FAST` says at import whether this channels has
those names; without them the layer takes channels' own methods (a deep copy per member and a
sweep per call: slower) and cannot list a group's members (gateway.layers.peers then sends to
the whole group); start-up logs it once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from channels.layers import InMemoryChannelLayer

from gateway.ops import logs

CHECKED = {"channels": "4.3.2"}
INTERNALS = ("_clean_expired", "channels", "groups")


def check() -> bool:
    """Whether this channels has every name in `INTERNALS`; logs what is missing when not."""
    probe = InMemoryChannelLayer()  # `channels` and `groups` are the constructor's
    missing = [name for name in INTERNALS if not hasattr(probe, name)]
    if missing:
        from importlib.metadata import version  # here: half a MiB the gateway does not import

        logs.layer.warning(
            "channels %s: InMemoryChannelLayer lacks %s (checked on %s): the in-memory layer takes "
            "channels' slower public path",
            version("channels"),
            ", ".join(missing),
            CHECKED["channels"],
        )
    return not missing


FAST = check()


def clean_expired(layer: InMemoryChannelLayer) -> None:
    """channels' sweep of expired messages and memberships."""
    layer._clean_expired()


def members(layer: InMemoryChannelLayer, group: str) -> list[str]:
    return list(layer.groups.get(group, ()))


def put_shared(
    layer: InMemoryChannelLayer,
    group: str,
    message: dict[str, Any],
    direct: dict[str, Callable[[dict[str, Any]], None]],
) -> int:
    """`message` on the queue of every member of `group`, one object for all, or handed to the
    member's `direct` callable at once; how many queues were full."""
    entry = (time.time() + layer.expiry, message)
    dropped = 0
    for channel in members(layer, group):
        take = direct.get(channel)
        if take is not None:
            take(message)
            continue
        try:
            queue(layer, channel).put_nowait(entry)
        except asyncio.QueueFull:
            dropped += 1
    return dropped


def put_one(layer: InMemoryChannelLayer, channel: str, message: dict[str, Any]) -> bool:
    """`message` itself (channels' send deep-copies it) on `channel`'s queue; False when it is full."""
    try:
        queue(layer, channel).put_nowait((time.time() + layer.expiry, message))
    except asyncio.QueueFull:
        return False
    return True


def queue(layer: InMemoryChannelLayer, channel: str) -> asyncio.Queue[Any]:
    """The queue of `channel` (made if missing): channels' receive awaits its `get`, without a sweep."""
    return layer.channels.setdefault(channel, asyncio.Queue(maxsize=layer.get_capacity(channel)))


def forget_if_empty(layer: InMemoryChannelLayer, channel: str, waiting: asyncio.Queue[Any]) -> None:
    """After a receive: an empty queue is dropped, as channels' own receive does."""
    if waiting.empty():
        layer.channels.pop(channel, None)
