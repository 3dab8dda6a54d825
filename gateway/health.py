"""Which protocol servers this process runs, and whether each is up."""

from __future__ import annotations

import time
from typing import Any

from gateway import metrics


class Health:
    def __init__(self, enabled: list[str]) -> None:
        self.enabled = list(enabled)
        self._up: dict[str, bool] = {name: False for name in enabled}
        self._since: dict[str, float] = {name: time.time() for name in enabled}
        self._detail: dict[str, str] = {}

    def set(self, name: str, up: bool, detail: str = "") -> None:
        if self._up.get(name) != up:
            self._since[name] = time.time()
        self._up[name] = up
        self._detail[name] = detail
        metrics.protocol_up.labels(name).set(1 if up else 0)

    def is_up(self, name: str) -> bool:
        return self._up.get(name, False)

    @property
    def ok(self) -> bool:
        return all(self._up.get(name, False) for name in self.enabled)

    def report(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "degraded",
            "protocols": {
                name: {
                    "up": self._up.get(name, False),
                    "since": round(self._since.get(name, 0.0), 3),
                    **({"detail": self._detail[name]} if self._detail.get(name) else {}),
                }
                for name in self.enabled
            },
        }
