"""The rule engine: per-sensor rule state, pure and clocked from outside.

No I/O and no clock of its own: callers pass `now` (monotonic seconds) and act on
the `Transition`s returned. One `SensorRules` per sensor holds the state of every
rule that applies to it (its own rules and its zone's).

No false alarms from replays: a value equal to the last known one does not raise
a rule without `for` when it is a retained message (the broker replays those
after every reconnect) or the first value after a gap (a restart, or the sensor
coming back online). A state that did not change is not news; a `for` rule starts
its hold again, since its timer did not survive the gap.

Modes: a rule with `modes` follows its condition in every mode but raises only in
its own; the site switching into one of them while the condition holds raises it
then (`set_mode`), its `for` counting from the switch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from gateway.config import Condition, Rule, Sensor
from gateway.engine.formats import Value, compare_equal

__all__ = ["SensorRules", "Transition", "matches", "may_raise"]


@dataclass(frozen=True, slots=True)
class Transition:
    kind: Literal["raise", "clear", "repeat"]
    rule: Rule
    value: Value | None
    # False when another process saw what caused it (shared subscriptions): that process acts on it,
    # this one only keeps its state the same.
    local: bool = True


def matches(cond: Condition, value: Value | None) -> bool:
    if value is None:
        return False
    if cond.equals is not None:
        return compare_equal(value, cond.equals)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if cond.above is not None:
        return value > cond.above
    if cond.below is not None:
        return value < cond.below
    return False


def may_raise(rule: Rule, mode: str) -> bool:
    """Whether the rule raises while the site is in `mode` (a rule without modes: always)."""
    return not rule.modes or mode in rule.modes


@dataclass(slots=True)
class _RuleState:
    active: bool = False
    acknowledged: bool = False
    pending_since: float | None = None
    last_raised: float | None = None
    last_notified: float = 0.0
    # The condition held (past `for`) in a mode the rule does not raise in: it raises on a switch.
    held: bool = False
    # Whether this process started the hold or raised the alert, and so acts when its timer is due.
    local: bool = True


class SensorRules:
    def __init__(self, sensor: Sensor, rules: list[Rule], now: float, mode: str = "") -> None:
        self.sensor = sensor
        self.rules = rules
        self.mode = mode
        self.states = {rule.id: _RuleState() for rule in rules}
        self.value: Value | None = None
        # Availability as the device reports it, and silence past expire_after.
        self.available: bool | None = None
        self.expired = False
        self.last_seen = now
        # When the newest reading was received (loop time), here or by a peer: a peer's report of an
        # older one, which can arrive after a newer reading here, changes nothing (see `_stale`).
        self.heard = -math.inf
        # Rules whose raise a cooldown dropped, seen here (not a peer's): the caller says so and empties it.
        self.dropped: list[Rule] = []
        # Rules whose raise the mode held back, seen here: the caller counts them and empties it.
        self.held_back: list[Rule] = []
        self.after_gap = False  # the next value is the first after a restart or an offline spell
        self.seen_local = True  # the last message came to this process (it acts if silence follows)
        self._local = True  # of the message being handled

    @property
    def online(self) -> bool | None:
        if self.expired or self.available is False:
            return False
        return self.available if self.available is not None else (True if self.value is not None else None)

    def restore(
        self, open_rules: dict[str, bool], value: Value | None, online: bool | None, now: float
    ) -> None:
        """State kept across a restart: open alerts (rule id -> acknowledged), last value."""
        for rule_id, acknowledged in open_rules.items():
            state = self.states.get(rule_id)
            if state is not None:
                state.active, state.acknowledged, state.last_notified = True, acknowledged, now
        self.value = value
        # Offline before the restart, by silence or by availability: the next message tells.
        self.available = True if online else None
        self.expired = online is False
        self.after_gap = True

    def reconfigure(self, sensor: Sensor, rules: list[Rule]) -> None:
        """New config (a reload): rules kept by id keep their state, alerts and timers included."""
        self.sensor, self.rules = sensor, rules
        self.states = {rule.id: self.states.get(rule.id) or _RuleState() for rule in rules}

    def acknowledge(self, rule_id: str) -> None:
        state = self.states.get(rule_id)
        if state is not None:
            state.acknowledged = True

    def notified(self, rule_id: str, now: float) -> None:
        """The alert was notified again (its silence ended): `repeat` counts from now."""
        state = self.states.get(rule_id)
        if state is not None:
            state.last_notified = now

    def set_mode(self, mode: str, now: float) -> list[Transition]:
        """The site switched mode: a rule whose condition holds and that may raise now starts again."""
        out: list[Transition] = []
        before, self.mode = self.mode, mode
        for rule in self.rules:
            state = self.states[rule.id]
            if state.active or may_raise(rule, before) or not may_raise(rule, mode):
                continue
            if state.held or state.pending_since is not None:
                state.held, state.pending_since = False, None
                self._local = state.local
                self._hold(rule, state, now, out)
        self._local = True
        return out

    def release_held(self, now: float) -> list[Transition]:
        """After a reload: a rule the mode held back that may raise in this mode now starts again
        (its `for` counting from now), as on a switch into one of its modes."""
        out: list[Transition] = []
        for rule in self.rules:
            state = self.states[rule.id]
            if state.active or not state.held or not may_raise(rule, self.mode):
                continue
            state.held, state.pending_since = False, None
            self._local = state.local
            self._hold(rule, state, now, out)
        self._local = True
        return out

    def on_value(
        self, value: Value, now: float, retained: bool = False, local: bool = True
    ) -> list[Transition]:
        """A reading. `local=False`: a peer process got it; the same state, transitions marked not local."""
        if self._stale(now, local):
            return []
        self._local = self.seen_local = local
        out: list[Transition] = []
        was_online = self.online
        unchanged = self.value is not None and value == self.value and type(value) is type(self.value)
        quiet = unchanged and (retained or self.after_gap)
        self.value, self.last_seen, self.after_gap = value, now, False
        if self.expired:
            self.expired = False
            self._availability_changed(was_online, now, out)
        for rule in self.rules:
            if rule.when.offline:
                continue
            state = self.states[rule.id]
            if state.active:
                clears = matches(rule.clear, value) if rule.clear else not matches(rule.when, value)
                if clears:
                    state.active, state.pending_since = False, None
                    out.append(Transition("clear", rule, value, local))
            elif matches(rule.when, value):
                if not (quiet and rule.for_ == 0) and not state.held:
                    self._hold(rule, state, now, out)
            else:
                state.pending_since, state.held = None, False
        return out

    def on_availability(self, available: bool, now: float, local: bool = True) -> list[Transition]:
        if self._stale(now, local):
            return []
        self._local = self.seen_local = local
        out: list[Transition] = []
        was_online = self.online
        self.available, self.last_seen = available, now
        if available:
            self.expired = False
        self._availability_changed(was_online, now, out)
        return out

    def _stale(self, now: float, local: bool) -> bool:
        """A peer's report of a reading older than one already applied here.

        With shared subscriptions, "opened" can reach process A and "closed", a millisecond later,
        process B, before A's report of "opened" does: applied late, that report would leave B
        thinking the door open (and raise again). Readings count in the order they were received,
        wherever that was; this process's own always arrive newest.
        """
        if not local and now < self.heard:
            return True
        self.heard = max(self.heard, now)
        return False

    def tick(self, now: float) -> list[Transition]:
        """Timers: silence past expire_after, `for` holds and `repeat`.

        Each acts where its cause was seen: silence where the last message came,
        a hold where it started, a repeat where the alert was raised.
        """
        out: list[Transition] = []
        expire = self.sensor.expire_after
        if expire and not self.expired and now - self.last_seen >= expire:
            was_online = self.online
            self.expired = True
            self._local = self.seen_local
            self._availability_changed(was_online, now, out)
        for rule in self.rules:
            state = self.states[rule.id]
            self._local = state.local
            if state.pending_since is not None and now - state.pending_since >= rule.for_:
                self._raise(rule, state, now, out)
            elif (
                state.active
                and not state.acknowledged
                and rule.repeat
                and now - state.last_notified >= rule.repeat
            ):
                state.last_notified = now
                out.append(Transition("repeat", rule, self.value, state.local))
        self._local = True
        return out

    def next_deadline(self) -> float | None:
        deadlines = []
        if self.sensor.expire_after and not self.expired:
            deadlines.append(self.last_seen + self.sensor.expire_after)
        for rule in self.rules:
            state = self.states[rule.id]
            if state.pending_since is not None:
                deadlines.append(state.pending_since + rule.for_)
            elif state.active and not state.acknowledged and rule.repeat:
                deadlines.append(state.last_notified + rule.repeat)
        return min(deadlines, default=None)

    def _availability_changed(self, was_online: bool | None, now: float, out: list[Transition]) -> None:
        online = self.online
        if online == was_online:
            return
        if online is False:
            self.after_gap = True
        for rule in self.rules:
            if not rule.when.offline:
                continue
            state = self.states[rule.id]
            if online is False and not state.active:
                self._hold(rule, state, now, out)
            elif online:
                state.pending_since, state.held = None, False
                if state.active:
                    state.active = False
                    out.append(Transition("clear", rule, self.value, self._local))

    def _hold(self, rule: Rule, state: _RuleState, now: float, out: list[Transition]) -> None:
        if rule.for_ > 0:
            if state.pending_since is None:
                state.pending_since, state.local = now, self._local
            if now - state.pending_since < rule.for_:
                return
        self._raise(rule, state, now, out)

    def _raise(self, rule: Rule, state: _RuleState, now: float, out: list[Transition]) -> None:
        state.pending_since = None
        if not may_raise(rule, self.mode):
            state.held, state.local = True, self._local
            if self._local:
                self.held_back.append(rule)
            return
        if state.last_raised is not None and now - state.last_raised < rule.cooldown:
            # Dropped, not delayed: the next message that still matches may raise.
            if self._local:
                self.dropped.append(rule)
            return
        state.active, state.acknowledged, state.local, state.held = True, False, self._local, False
        state.last_raised = state.last_notified = now
        out.append(Transition("raise", rule, self.value, self._local))
