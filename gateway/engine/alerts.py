"""The alert lifecycle, pure: raise, acknowledge, clear, repeat; time is a parameter.

`gateway.store.alerts.AlertBook` stores what these functions return, one transaction each.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from gateway.config import Rule, Sensor
from gateway.engine.display import display, plain
from gateway.engine.formats import Value
from gateway.engine.templates import render_message
from gateway.engine.text import compact_json

__all__ = [
    "OPEN_STATES",
    "AckRefused",
    "AlertChange",
    "AlertRecord",
    "acknowledge",
    "alert_groups",
    "clear",
    "escalate",
    "iso",
    "new_id",
    "new_ids",
    "raise_alert",
    "repeat",
    "unsilence",
]

# Short ids to type on a phone: no 0/o, 1/l/i.
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
OPEN_STATES = ("active", "acknowledged")


class AckRefused(Exception):
    """An acknowledgement that cannot be applied; the message says why."""


def alert_groups(rule: Rule, sensor: Sensor) -> list[str]:
    """The channel-layer groups an alert of this rule and sensor goes to ("alerts" first)."""
    return sorted({"alerts", f"alerts.{sensor.zone}", f"sensor.{sensor.id}", *rule.notify})


def new_id() -> str:
    """An alert's (or a silence's) id: six letters of `_ALPHABET`, uniform, from `secrets`."""
    return new_ids(1)[0]


# Random bytes to letters of _ALPHABET in C: 248 = 8 x 31 values map evenly, the rest are dropped.
_LETTERS = bytes(_ALPHABET[b % len(_ALPHABET)].encode()[0] if b < 248 else 0x21 for b in range(256))


def new_ids(n: int) -> list[str]:
    """`n` ids as `new_id` gives them, drawn together (the journal's pool: 4,096 at a time)."""
    letters = b""
    while len(letters) < 6 * n:
        letters += secrets.token_bytes(7 * n).translate(_LETTERS).replace(b"!", b"")
    text = letters.decode()
    return [text[i : i + 6] for i in range(0, 6 * n, 6)]


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert as the book keeps it; `as_json` is what every protocol is told of it."""

    id: str
    site: str
    rule: str
    sensor: str
    zone: str
    severity: str
    state: str  # active | acknowledged | cleared
    message: str
    value: Value | None
    groups: tuple[str, ...]
    raised_at: datetime
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    cleared_at: datetime | None = None
    # The silence that holds its notifications back (SPEC §10), if one matches.
    silenced: str | None = None
    # Escalation counts from here: the raise, or the end of the silence that held it.
    notify_from: datetime | None = None
    # The last escalation step fired (None: none yet).
    escalation: int | None = None
    # Its value as a person reads it (gateway.engine.display), null for alerts from before it.
    display: str | None = None

    @property
    def labels(self) -> dict[str, str]:
        """What a silence matches on."""
        return {"sensor": self.sensor, "zone": self.zone, "rule": self.rule, "severity": self.severity}

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule,
            "sensor": self.sensor,
            "zone": self.zone,
            "severity": self.severity,
            "state": self.state,
            "message": self.message,
            "value": self.value,
            "raised_at": iso(self.raised_at),
            # Most alerts have neither: no call for them (the alert's way to its frame is short).
            "acknowledged_at": None if self.acknowledged_at is None else iso(self.acknowledged_at),
            "acknowledged_by": self.acknowledged_by,
            "cleared_at": None if self.cleared_at is None else iso(self.cleared_at),
            "silenced": self.silenced,
            "escalation": self.escalation,
            "display": self.display if self.display is not None else plain(self.value),
        }


def raise_alert(
    rule: Rule,
    sensor: Sensor,
    value: Value | None,
    site: str,
    now: datetime,
    message: str | None = None,
    silenced: str | None = None,
    alert_id: str | None = None,
) -> AlertRecord:
    """A new active alert, with a new id; `message`: the text as it is, instead of the rule's template.

    `silenced`: the id of the silence over it, if one is; it is raised and shown all the same.
    `alert_id`: its id, drawn beforehand (gateway.store.journal); a new one otherwise.
    """
    shown = display(value, sensor)
    return AlertRecord(
        id=alert_id or new_id(),
        site=site,
        rule=rule.id,
        sensor=sensor.id,
        zone=sensor.zone,
        severity=rule.severity,
        state="active",
        message=message or render_message(rule.message, rule, sensor, value, site, shown),
        value=value,
        groups=tuple(alert_groups(rule, sensor)),
        raised_at=now,
        silenced=silenced,
        notify_from=now,
        display=shown[:200],
    )


def acknowledge(alert_id: str, alert: AlertRecord | None, by: str, now: datetime) -> AlertRecord:
    """The alert acknowledged by `by`; `alert`: the one `alert_id` names, None when there is none."""
    if alert is None:
        raise AckRefused(f"no alert with id {alert_id!r}")
    if alert.state == "cleared":
        raise AckRefused(f"alert {alert.id} is already cleared")
    if alert.state == "acknowledged":
        raise AckRefused(f"alert {alert.id} was already acknowledged by {alert.acknowledged_by}")
    return replace(alert, state="acknowledged", acknowledged_at=now, acknowledged_by=by)


def clear(
    alert: AlertRecord | None, value: Value | None, now: datetime, shown: str | None = None
) -> AlertRecord | None:
    """The open alert cleared by `value` (`shown`: as it reads); None when there is none to clear."""
    if alert is None or alert.state not in OPEN_STATES:
        return None
    return replace(alert, state="cleared", cleared_at=now, value=value, display=shown)


def escalate(alert: AlertRecord | None, level: int) -> AlertRecord | None:
    """The alert at escalation `level`; None when that step must not fire (any more).

    Only an active alert that no silence holds escalates, and each level at most once: a
    step that fired before a restart (or in another process) is not fired again.
    """
    if alert is None or alert.state != "active" or alert.silenced is not None:
        return None
    if level <= (alert.escalation or 0):
        return None
    return replace(alert, escalation=level)


def unsilence(alert: AlertRecord, silenced: str | None, now: datetime) -> AlertRecord:
    """The alert once the silence over it ended: another silence's id, or notified from `now`."""
    if silenced is not None:
        return replace(alert, silenced=silenced)
    if alert.state != "active":
        return replace(alert, silenced=None)
    return replace(alert, silenced=None, notify_from=now)


def repeat(alert: AlertRecord | None) -> AlertRecord | None:
    """The alert to announce again: only while it is active (acknowledged: someone is on it)."""
    return alert if alert is not None and alert.state == "active" else None


@dataclass(frozen=True)
class AlertChange:
    event: str  # raised | acknowledged | cleared | repeated | escalated | unsilenced
    seq: int
    alert: dict[str, Any]
    groups: tuple[str, ...] = ()
    text: str = field(default="", compare=False)
    # False: the database refused it (locked, full); announced all the same, with seq 0.
    saved: bool = True

    @classmethod
    def make(
        cls, event: str, seq: int, alert: dict[str, Any], groups: tuple[str, ...] = (), saved: bool = True
    ) -> AlertChange:
        # Encoded once here, sent as-is to every WebSocket and MQTT subscriber.
        envelope: dict[str, Any] = {"type": "alert", "event": event, "seq": seq, "alert": alert}
        if event == "escalated":
            envelope["level"] = alert["escalation"]
        if not saved:
            envelope["saved"] = False
        return cls(event, seq, alert, groups, compact_json(envelope), saved)

    @classmethod
    def unsaved(
        cls,
        event: str,
        rule: Rule,
        sensor: Sensor,
        value: Value | None,
        raised: dict[str, Any] | None,
        now: datetime,
    ) -> AlertChange:
        """A raise or clear the database would not take: the alert as it would have been stored."""
        alert = dict(raised) if raised else raise_alert(rule, sensor, value, "", now).as_json()
        if event == "cleared":
            alert.update(state="cleared", cleared_at=iso(now), value=value, display=display(value, sensor))
        return cls.make(event, 0, alert, tuple(alert_groups(rule, sensor)), saved=False)
