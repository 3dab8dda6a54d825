"""`[history]`: how long the per-minute readings of numeric sensors are kept (SPEC §11)."""

from __future__ import annotations

from pydantic import field_validator

from gateway.config.fields import Duration, Section

__all__ = ["HistorySection"]

DAY = 86400.0


class HistorySection(Section):
    # "0": no history is kept (nor written); else at least an hour.
    keep: Duration = 7 * DAY

    @field_validator("keep")
    @classmethod
    def _keep(cls, value: float) -> float:
        if 0 < value < 3600:
            raise ValueError('must be "0" (no history) or at least "1h", such as "7d"')
        return value
