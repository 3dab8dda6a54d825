"""channels_redis through its internals, in one place (checked on channels-redis 4.3.0).

- `group_key`: the Redis key of a group's members (`RedisChannelLayer._group_key`), to list
  them (gateway.layers.peers sends to the others only) and to see whether Redis lost ours;
- `count_overflows`: channels_redis reports a group send's full channels only in an INFO log
  line (`OVERFLOW_LINE`, on logger `channels_redis.core`); they are counted from it.

channels_redis is imported here without `cryptography.fernet`, which it takes when installed for
its messages' encryption (`symmetric_encryption_keys`, which the gateway never sets): 6 MiB of
RSS in every process on a Redis layer (cryptography's Rust library).

`FAST` says at import whether this channels_redis has both. Without them a group's members are
not known (peers send to the whole group; after a failed receive the memberships are taken as
lost and renewed), and a group send's overflows go uncounted (less exact); start-up logs it once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.ops import logs
from gateway.ops.process import hidden

with hidden("cryptography.fernet"):
    from channels_redis.core import RedisChannelLayer

CHECKED = {"channels-redis": "4.3.0"}
INTERNALS = ("RedisChannelLayer._group_key", "RedisChannelLayer.group_send's OVERFLOW_LINE")
OVERFLOW_LINE = "%s of %s channels over capacity in group %s"  # (full, members, group)
LOGGER = "channels_redis.core"


def check() -> bool:
    """Whether this channels_redis has what `INTERNALS` names; logs what is missing when not."""
    present = (
        hasattr(RedisChannelLayer, "_group_key"),
        OVERFLOW_LINE in RedisChannelLayer.group_send.__code__.co_consts,
    )
    missing = [internal for internal, there in zip(INTERNALS, present, strict=True) if not there]
    if missing:
        from importlib.metadata import version  # here: half a MiB the gateway does not import

        logs.layer.warning(
            "channels-redis %s lacks %s (checked on %s): group members not known, group overflows "
            "not counted",
            version("channels-redis"),
            ", ".join(missing),
            CHECKED["channels-redis"],
        )
    return not missing


FAST = check()


def group_key(layer: RedisChannelLayer, group: str) -> bytes | None:
    """The key of the sorted set of `group`'s members (score: when they joined); None: not known."""
    return layer._group_key(group) if FAST else None  # type: ignore[no-any-return]


def count_overflows(counted: Callable[[str, int], None]) -> None:
    """Have channels_redis's report of a group send's full channels call `counted(group, how many)`."""
    source = logging.getLogger(LOGGER)
    source.addFilter(_OverflowCounter(counted))
    source.setLevel(logging.INFO)  # the line is INFO; below that it is never made


class _OverflowCounter(logging.Filter):
    def __init__(self, counted: Callable[[str, int], None]) -> None:
        super().__init__()
        self.counted = counted

    def filter(self, record: logging.LogRecord) -> bool:
        if FAST and record.msg == OVERFLOW_LINE and isinstance(record.args, tuple) and len(record.args) == 3:
            self.counted(str(record.args[2]), int(str(record.args[0])))
            return False  # counted (and logged by the counter, rate-limited): not a line per send
        return True
