"""Per-client limits: `TokenBucket`, the flood control of the WebSocket and Telegram servers, and
`TokenBrake`, the wait after wrong tokens."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


class TokenBucket:
    """`rate` messages a second on average, `burst` at once; full at first."""

    __slots__ = ("burst", "rate", "refilled", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.refilled = burst, 0.0

    def take(self, now: float | None = None) -> bool:
        """Whether one more message is within the rate (and count it)."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class TokenBrake:
    """Per client: a few free tries, then each wrong token doubles the wait before the next one.

    The wait is a refusal with Retry-After, not a held connection, so a flood costs the
    gateway nothing. A right token does not wipe the count (a script that knows one must not
    reset the wait of a guesser at the same address); `forget_after` quiet seconds do.
    """

    def __init__(
        self,
        free_tries: int = 3,
        first_wait: float = 2.0,
        max_wait: float = 300.0,
        forget_after: float = 900.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_tries, self.first_wait, self.max_wait = free_tries, first_wait, max_wait
        self.forget_after, self.max_clients, self.clock = forget_after, max_clients, clock
        self._clients: OrderedDict[str, _Record] = OrderedDict()

    def wait(self, client: str) -> float:
        """Seconds this client must still wait before its next try (0: may try now)."""
        record = self._get(client)
        return 0.0 if record is None else max(0.0, record.locked_until - self.clock())

    def failed(self, client: str) -> float:
        """Count a wrong token; returns the wait it earned."""
        now = self.clock()
        record = self._get(client) or _Record()
        record.failures += 1
        record.last = now
        extra = record.failures - self.free_tries
        wait = 0.0 if extra < 0 else min(self.max_wait, self.first_wait * 2**extra)
        record.locked_until = now + wait
        self._clients[client] = record
        self._clients.move_to_end(client)
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        return wait

    def _get(self, client: str) -> _Record | None:
        record = self._clients.get(client)
        if record is not None and self.clock() - record.last > self.forget_after:
            del self._clients[client]
            return None
        return record
