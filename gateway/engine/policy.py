"""The alert lifecycle of a site as one pure state machine: rules, modes, silences, escalation.

Readings, acknowledgements, silences, mode switches and clock ticks go in (each with `now`);
`Notice`s come out, saying for each alert what happens and whether people are told
(Telegram, actions). It ties the engine's parts together the way the gateway must, so
the property tests (tests/test_engine_policy.py) can check the whole without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.config import Config, Rule, Sensor
from gateway.engine.escalation import AlertState, due_levels, next_deadline
from gateway.engine.formats import Value
from gateway.engine.rules import SensorRules, Transition
from gateway.engine.silences import Silence, labels, silencing

__all__ = ["ModeError", "Notice", "Policy"]

Kind = Literal["raised", "cleared", "repeated", "escalated", "unsilenced"]


class ModeError(ValueError):
    """An unknown mode; the message lists the known ones."""


@dataclass(frozen=True, slots=True)
class Notice:
    """One alert event. `notify`: Telegram is told and the event's actions run."""

    kind: Kind
    sensor: str
    rule: str
    silenced: str | None = None
    level: int = 0
    notify: bool = True


@dataclass(slots=True)
class _Open:
    sensor: Sensor
    rule: Rule
    since: float  # raised, or its silence ended: escalation counts from here
    acknowledged: bool = False
    fired: int = 0
    silenced: str | None = None

    @property
    def state(self) -> AlertState:
        return "acknowledged" if self.acknowledged else "active"

    def due(self, now: float) -> list[int]:
        return due_levels(self.since, self.state, bool(self.silenced), self.rule.escalate, self.fired, now)

    def deadline(self) -> float | None:
        return next_deadline(self.since, self.state, bool(self.silenced), self.rule.escalate, self.fired)

    @property
    def labels(self) -> dict[str, str]:
        return labels(self.sensor, self.rule)


class Policy:
    def __init__(self, config: Config, now: float, mode: str | None = None) -> None:
        self.modes = config.gateway.modes
        self.mode = config.gateway.mode if mode is None else mode
        self.boards = {
            sensor.id: SensorRules(sensor, config.rules_for(sensor), now, self.mode)
            for sensor in config.sensors
        }
        self.silences: dict[str, Silence] = {}
        self.open: dict[tuple[str, str], _Open] = {}
        # Notifications a silence held back (raises, clears, repeats), for the metrics.
        self.suppressed = 0

    def reading(self, sensor_id: str, value: Value, now: float) -> list[Notice]:
        out = self._expire(now)
        board = self.boards[sensor_id]
        self._apply(board, board.on_value(value, now), now, out)
        return out

    def acknowledge(self, sensor_id: str, rule_id: str, now: float) -> list[Notice]:
        out = self._expire(now)
        alert = self.open.get((sensor_id, rule_id))
        if alert is not None:
            alert.acknowledged = True
            self.boards[sensor_id].acknowledge(rule_id)
        return out

    def set_mode(self, mode: str, now: float) -> list[Notice]:
        if mode not in self.modes:
            known = ", ".join(self.modes) or "none: set gateway.modes"
            raise ModeError(f"unknown mode {mode!r} (known: {known})")
        out = self._expire(now)
        self.mode = mode
        for board in self.boards.values():
            self._apply(board, board.set_mode(mode, now), now, out)
        return out

    def add_silence(self, silence: Silence, now: float) -> list[Notice]:
        """From its creation it covers matching open alerts: their repeats and escalation stop."""
        out = self._expire(now)
        self.silences[silence.id] = silence
        self._resilence(now, out)
        return out

    def remove_silence(self, silence_id: str, now: float) -> list[Notice]:
        out = self._expire(now)
        if self.silences.pop(silence_id, None) is not None:
            self._resilence(now, out)
        return out

    def tick(self, now: float) -> list[Notice]:
        out = self._expire(now)
        for board in self.boards.values():
            self._apply(board, board.tick(now), now, out)
        for alert in self.open.values():
            for level in alert.due(now):
                alert.fired = level
                out.append(Notice("escalated", alert.sensor.id, alert.rule.id, None, level))
        return out

    def next_deadline(self) -> float | None:
        deadlines = [d for board in self.boards.values() if (d := board.next_deadline()) is not None]
        deadlines += [s.ends_at for s in self.silences.values()]
        for alert in self.open.values():
            due = alert.deadline()
            if due is not None:
                deadlines.append(due)
        return min(deadlines, default=None)

    def _apply(
        self, board: SensorRules, transitions: list[Transition], now: float, out: list[Notice]
    ) -> None:
        sensor = board.sensor
        for t in transitions:
            key = (sensor.id, t.rule.id)
            if t.kind == "raise":
                alert = self.open[key] = _Open(sensor, t.rule, now)
                alert.silenced = silencing(self.silences.values(), alert.labels, now)
                notice = Notice("raised", sensor.id, t.rule.id, alert.silenced, notify=not alert.silenced)
            elif t.kind == "clear":
                cleared = self.open.pop(key, None)
                silenced = cleared.silenced if cleared else None
                notice = Notice("cleared", sensor.id, t.rule.id, silenced, notify=not silenced)
            elif key in self.open and not self.open[key].silenced:
                notice = Notice("repeated", sensor.id, t.rule.id)
            else:
                # A repeat is only a notification: under a silence nothing goes out.
                self.suppressed += key in self.open
                continue
            self.suppressed += not notice.notify
            out.append(notice)

    def _expire(self, now: float) -> list[Notice]:
        """Silences past their end go; the alerts they held are notified (the entry points' first step)."""
        out: list[Notice] = []
        ended = [sid for sid, s in self.silences.items() if now >= s.ends_at]
        for sid in ended:
            del self.silences[sid]
        if ended:
            self._resilence(now, out)
        return out

    def _resilence(self, now: float, out: list[Notice]) -> None:
        for alert in self.open.values():
            was, alert.silenced = alert.silenced, silencing(self.silences.values(), alert.labels, now)
            if was and not alert.silenced and not alert.acknowledged:
                # As if raised now: a message, its on_raise actions, escalation and repeat from now.
                alert.since = now
                self.boards[alert.sensor.id].notified(alert.rule.id, now)
                out.append(Notice("unsilenced", alert.sensor.id, alert.rule.id))
