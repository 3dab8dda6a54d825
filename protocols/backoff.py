"""`Backoff`: how long to wait before trying again something that keeps failing.

The wait starts at `first` and doubles with each failure in a row up to `limit`. With `jitter`,
each wait is spread by that fraction either way, so that clients that failed together (a
broker restart drops them all) do not all come back at the same moment.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]

# More doublings than any limit needs; the count may go on past them without overflowing.
_DOUBLINGS = 64


class Backoff:
    __slots__ = ("failures", "first", "jitter", "limit")

    def __init__(self, first: float, limit: float, jitter: float = 0.0) -> None:
        self.first, self.limit, self.jitter = first, limit, jitter
        self.failures = 0  # in a row, since the last `reset`

    def delay(self, failures: int) -> float:
        """The seconds to wait after `failures` failures in a row (1 or more)."""
        if failures > _DOUBLINGS:
            seconds = self.limit
        else:
            seconds = min(self.first * 2 ** max(failures - 1, 0), self.limit)
        if self.jitter:
            return seconds * random.uniform(1 - self.jitter, 1 + self.jitter)
        return seconds

    def next(self) -> float:
        """One more failure: the seconds to wait before the next attempt."""
        self.failures += 1
        return self.delay(self.failures)

    def reset(self) -> None:
        """It worked: the next failure waits `first` again."""
        self.failures = 0

    def exhaust(self) -> None:
        """Wait `limit` from the next failure on, until a `reset`: for what only a person can mend."""
        self.failures = max(self.failures, _DOUBLINGS)
