"""Which protocol servers this process runs, and whether each is up."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.ops import metrics


class Health:
    def __init__(self, enabled: list[str]) -> None:
        self.enabled = list(enabled)
        self._up: dict[str, bool] = {name: False for name in enabled}
        self._since: dict[str, float] = {name: time.time() for name in enabled}
        # Durations on the monotonic clock: an edge box's wall clock jumps when NTP first syncs.
        self._changed: dict[str, float] = {name: time.monotonic() for name in enabled}
        self._detail: dict[str, str] = {}
        # Parts of a protocol that fail while it is connected, e.g. "sensor boiler" -> "messages failing: …".
        self._faults: dict[str, dict[str, str]] = {name: {} for name in enabled}
        # Called after a protocol goes up or down or its detail changes (the systemd notifier listens).
        self.listeners: set[Callable[[], None]] = set()

    def set(self, name: str, up: bool, detail: str = "") -> None:
        changed = self._up.get(name) != up or self._detail.get(name, "") != detail
        if self._up.get(name) != up:
            self._since[name] = time.time()
            self._changed[name] = time.monotonic()
        self._up[name] = up
        self._detail[name] = detail
        metrics.protocol_up.labels(name).set(1 if up else 0)
        if changed:
            for listener in list(self.listeners):
                listener()

    def fault(self, name: str, part: str, detail: str | None) -> None:
        """`part` of protocol `name` fails (`detail` says how), or works again (None)."""
        faults = self._faults.setdefault(name, {})
        if faults.get(part) == detail:
            return  # as it was (None: nothing failed, nothing to clear)
        if detail is None:
            del faults[part]
        else:
            faults[part] = detail
        for listener in list(self.listeners):
            listener()

    def is_up(self, name: str) -> bool:
        return self._up.get(name, False)

    def down_for(self, name: str) -> float:
        """Seconds `name` has been down (since start-up if it never came up); 0 while it is up."""
        if self.is_up(name):
            return 0.0
        return time.monotonic() - self._changed.get(name, time.monotonic())

    @property
    def connected(self) -> bool:
        """Every enabled protocol is up, whatever fails inside one (systemd's READY=1)."""
        return all(self._up.get(name, False) for name in self.enabled)

    @property
    def ok(self) -> bool:
        """What /healthz says: every enabled protocol up, and nothing failing inside one."""
        return self.connected and not any(self._faults.get(name) for name in self.enabled)

    def _working(self, name: str) -> bool:
        return self.is_up(name) and not self._faults.get(name)

    def _describe(self, name: str) -> str:
        parts = [self._detail.get(name, "")]
        parts += [f"{part}: {detail}" for part, detail in sorted(self._faults.get(name, {}).items())]
        return "; ".join(p for p in parts if p)

    def summary(self) -> str:
        """One line for people, e.g. "web up, mqtt up, telegram down (the bot token was refused (401))"."""
        parts = []
        for name in self.enabled:
            detail = self._describe(name)
            state = "up" if self._working(name) else "down"
            parts.append(f"{name} {state} ({detail})" if detail else f"{name} {state}")
        return ", ".join(parts)

    def report(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "degraded",
            "protocols": {
                name: {
                    "up": self._working(name),
                    "since": round(self._since.get(name, 0.0), 3),
                    **({"detail": detail} if (detail := self._describe(name)) else {}),
                }
                for name in self.enabled
            },
        }
