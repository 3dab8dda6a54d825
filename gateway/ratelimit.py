"""`TokenBucket`: the per-client flood control of the WebSocket and Telegram servers."""

from __future__ import annotations

import time


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
