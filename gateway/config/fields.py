"""The building blocks every config section shares: the strict base model and durations."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

__all__ = ["Duration", "Section", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """`500ms`, `5s`, `2m`, `1h` (or a bare number of seconds) -> seconds."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 5s, 2m or 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration such as 500ms, 5s, 2m or 1h")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be zero or positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Section(BaseModel):
    # A misspelt key is an error that names it, not a silently ignored line.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
