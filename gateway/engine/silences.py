"""Silences (maintenance, "mute"): matchers over an alert's sensor, zone, rule and severity, and an end.

Pure: the caller gives the id and the time. A request is checked here as SPEC §10 gives it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from gateway.config import Rule, Sensor, parse_duration

__all__ = [
    "MATCHERS",
    "MAX_SILENCE",
    "Silence",
    "SilenceError",
    "active",
    "labels",
    "matches",
    "parse_silence",
    "silencing",
]

MATCHERS = ("sensor", "zone", "rule", "severity")
MAX_SILENCE = 7 * 86400.0
SEVERITIES = ("critical", "warning", "info")
_KEYS = (*MATCHERS, "for", "comment")
_MAX_COMMENT = 500
# As long as the store keeps them (gateway.store.models.Silence): a longer one failed there, not here.
_MAX_LENGTH = {"sensor": 128, "zone": 64, "rule": 128, "severity": 16}


class SilenceError(ValueError):
    """A bad silence request, phrased for whoever sent it."""


@dataclass(frozen=True, slots=True)
class Silence:
    id: str
    sensor: str | None
    zone: str | None
    rule: str | None
    severity: str | None
    comment: str | None
    created_by: str
    created_at: float
    ends_at: float

    def __post_init__(self) -> None:
        if not any(getattr(self, key) for key in MATCHERS):
            raise SilenceError(f"a silence needs at least one of {', '.join(MATCHERS)}")

    @property
    def matchers(self) -> dict[str, str]:
        return {key: value for key in MATCHERS if (value := getattr(self, key))}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def labels(sensor: Sensor, rule: Rule) -> dict[str, str]:
    """What a silence matches on, for an alert of this rule on this sensor."""
    return {"sensor": sensor.id, "zone": sensor.zone, "rule": rule.id, "severity": rule.severity}


def matches(silence: Silence, alert: Mapping[str, Any]) -> bool:
    """Every matcher the silence gives equals the alert's key."""
    return all(alert.get(key) == value for key, value in silence.matchers.items())


def active(silence: Silence, now: float) -> bool:
    return silence.created_at <= now < silence.ends_at


def silencing(silences: Iterable[Silence], alert: Mapping[str, Any], now: float) -> str | None:
    """The id of the active silence over the alert (the one that lasts longest), or None."""
    over = [s for s in silences if active(s, now) and matches(s, alert)]
    return max(over, key=lambda s: (s.ends_at, s.id)).id if over else None


def parse_silence(request: Any, *, id: str, created_by: str, now: float) -> Silence:
    """A request (`{"zone": "kitchen", "for": "2h", "comment": "…"}`) -> a Silence from `now`."""
    if not isinstance(request, Mapping):
        raise SilenceError('a silence is an object such as {"zone": "kitchen", "for": "2h"}')
    unknown = sorted(str(key) for key in request if key not in _KEYS)
    if unknown:
        raise SilenceError(f"unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    given: dict[str, str | None] = {}
    for key in MATCHERS:
        value = request.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise SilenceError(f"{key} must be a non-empty string")
        given[key] = value.strip() if isinstance(value, str) else None
        if len(given[key] or "") > _MAX_LENGTH[key]:
            raise SilenceError(f"{key} is longer than {_MAX_LENGTH[key]} characters")
    if not any(given.values()):
        raise SilenceError(f"give at least one of {', '.join(MATCHERS)}")
    if given["severity"] is not None and given["severity"] not in SEVERITIES:
        raise SilenceError(f"severity must be one of {', '.join(SEVERITIES)}")
    if request.get("for") in (None, ""):
        raise SilenceError("'for' is required: a duration such as 30m or 2h (at most 7d)")
    try:
        seconds = parse_duration(request["for"])
    except ValueError as err:
        raise SilenceError(f"for: {err}") from None
    if not 0 < seconds <= MAX_SILENCE:
        raise SilenceError("for: must be more than 0 and at most 7d")
    comment = request.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise SilenceError("comment must be a string")
    if comment is not None and len(comment) > _MAX_COMMENT:
        raise SilenceError(f"comment is longer than {_MAX_COMMENT} characters")
    return Silence(
        id=id,
        sensor=given["sensor"],
        zone=given["zone"],
        rule=given["rule"],
        severity=given["severity"],
        comment=comment or None,
        created_by=created_by,
        created_at=now,
        ends_at=now + seconds,
    )
