"""Alert management in the config: modes, `[[schedules]]`, a rule's `modes` and `escalate` steps.

Each model checks its own shape; `check_modes` checks the mode names across the file.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Sequence
from typing import Literal, Protocol

from pydantic import Field, field_validator

from gateway.config.fields import Duration, Section

__all__ = [
    "MODE_NAME",
    "WEEKDAYS",
    "Action",
    "EscalationStep",
    "Schedule",
    "check_escalation",
    "check_group",
    "check_modes",
    "check_timezone",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MODE_NAME = r"^[A-Za-z0-9_-]+$"

_GROUP = re.compile(r"alerts(\.[A-Za-z0-9_-]+)*")
_TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def check_group(group: str) -> str:
    if not _GROUP.fullmatch(group):
        raise ValueError(f"notify group {group!r} must be 'alerts' or 'alerts.<name>'")
    return group


def check_timezone(name: str) -> str:
    """An IANA name such as Europe/Berlin; "" is the system's."""
    if name:
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{name!r} is not an IANA time zone such as Europe/Berlin") from None
    return name


class Action(Section):
    topic: str = Field(min_length=1)
    payload: str = ""
    qos: Literal[0, 1, 2] = 1
    retain: bool = False


class Schedule(Section):
    """At `at` local time (on `days`, every day if none) the site switches to `mode`."""

    mode: str = Field(min_length=1)
    at: str
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = []

    @field_validator("at")
    @classmethod
    def _at(cls, value: str) -> str:
        if not _TIME.fullmatch(value):
            raise ValueError(f'{value!r} is not a time of day as "HH:MM", from 00:00 to 23:59')
        return value

    @property
    def minute(self) -> int:
        """Minutes after midnight."""
        hours, minutes = self.at.split(":")
        return int(hours) * 60 + int(minutes)


class EscalationStep(Section):
    """Fires once `after` has passed since the alert was raised (or its silence ended), if unacknowledged."""

    after: Duration = Field(gt=0)
    notify: list[str] = []
    actions: list[Action] = []

    @field_validator("notify")
    @classmethod
    def _notify(cls, value: list[str]) -> list[str]:
        return [check_group(group) for group in value]


def check_escalation(steps: Sequence[EscalationStep]) -> str | None:
    """The first step not later than the one before, as `escalate[j].after: …`; None if in order."""
    for j in range(1, len(steps)):
        if steps[j].after <= steps[j - 1].after:
            return (
                f"escalate[{j}].after: must be later than the step before "
                f"(escalate[{j - 1}].after is {steps[j - 1].after:g}s)"
            )
    return None


class _Ruled(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def modes(self) -> list[str]: ...


def check_modes(
    modes: Sequence[str], mode: str, schedules: Sequence[Schedule], rules: Sequence[_Ruled]
) -> None:
    """Every mode named (the initial one, a schedule's, a rule's) is one of `gateway.modes`."""
    known = ", ".join(modes)

    def unknown(key: str, name: str) -> ValueError:
        if not modes:
            return ValueError(f"{key}: unknown mode {name!r} (no modes: set gateway.modes first)")
        return ValueError(f"{key}: unknown mode {name!r} (known: {known})")

    seen: set[str] = set()
    for name in modes:
        if name in seen:
            raise ValueError(f"gateway.modes: {name!r} is listed twice")
        seen.add(name)
    if mode and mode not in seen:
        raise unknown("gateway.mode", mode)
    for i, schedule in enumerate(schedules):
        if schedule.mode not in seen:
            raise unknown(f"schedules[{i}].mode", schedule.mode)
    for rule in rules:
        for name in rule.modes:
            if name not in seen:
                raise unknown(f"rules[{rule.id}].modes", name)
