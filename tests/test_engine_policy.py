"""The lifecycle as a pure state machine (gateway/engine/policy.py), under random sequences.

Readings, acknowledgements, silences created and removed, mode switches and clock ticks, in any
order; the test keeps its own account (what is open, acknowledged, silenced, the mode) and checks
each step's notices against SPEC §10.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import Config, parse_config
from gateway.engine.policy import ModeError, Notice, Policy
from gateway.engine.silences import Silence

CONFIG: Config = parse_config(
    {
        "gateway": {"modes": ["home", "away", "night"], "mode": "home"},
        "sensors": [
            {"id": "s1", "zone": "a", "topic": "t/s1", "format": "plain"},
            {"id": "s2", "zone": "a", "topic": "t/s2", "format": "plain"},
            {"id": "s3", "zone": "b", "topic": "t/s3", "format": "plain"},
        ],
        "rules": [
            {
                "id": "hot",
                "sensor": "s1",
                "when": {"above": 50},
                "severity": "critical",
                "repeat": "30s",
                "escalate": [{"after": "10s"}, {"after": "20s"}],
            },
            {
                "id": "motion",
                "zone": "a",
                "when": {"above": 70},
                "modes": ["away", "night"],
                "escalate": [{"after": "15s"}],
            },
            {
                "id": "night-only",
                "sensor": "s3",
                "when": {"above": 50},
                "for": "5s",
                "modes": ["night"],
                "repeat": "10s",
                "escalate": [{"after": "5s"}, {"after": "25s"}, {"after": "40s"}],
            },
            {
                "id": "low",
                "sensor": "s3",
                "when": {"below": 10},
                "cooldown": "20s",
                "escalate": [{"after": "3s"}],
            },
        ],
    },
    {},
    "test",
)
SENSORS = CONFIG.sensors_by_id
RULES = {rule.id: rule for rule in CONFIG.rules}
PAIRS = [(s.id, r.id) for s in CONFIG.sensors for r in CONFIG.rules_for(s)]
MATCHERS: list[dict[str, str]] = [
    {"zone": "a"},
    {"sensor": "s1"},
    {"rule": "motion"},
    {"sensor": "s3", "rule": "night-only"},
    {"severity": "critical"},
    {"zone": "b", "severity": "warning"},
]

operations = st.one_of(
    st.tuples(st.just("read"), st.sampled_from(sorted(SENSORS)), st.sampled_from([0, 5, 30, 60, 80])),
    # Acknowledges the n-th open alert (or a rule and sensor with none).
    st.tuples(st.just("ack"), st.integers(0, 20)),
    st.tuples(st.just("silence"), st.sampled_from(range(len(MATCHERS))), st.sampled_from([5, 20, 60])),
    st.tuples(st.just("unsilence"), st.integers(0, 20)),
    st.tuples(st.just("mode"), st.sampled_from(["home", "away", "night"])),
    st.tuples(st.just("tick"), st.sampled_from([0, 1, 3, 7, 15, 40])),
)
steps = st.lists(st.tuples(st.sampled_from([0, 0.5, 1, 2, 6]), operations), min_size=20, max_size=80)


def _labels(key: tuple[str, str]) -> dict[str, str]:
    sensor, rule = SENSORS[key[0]], RULES[key[1]]
    return {"sensor": sensor.id, "zone": sensor.zone, "rule": rule.id, "severity": rule.severity}


@dataclass
class Account:
    """What the test knows, kept apart from the policy's own state."""

    now: float = 0.0
    mode: str = "home"
    values: dict[str, float] = field(default_factory=dict)
    silences: dict[str, Silence] = field(default_factory=dict)
    open: set[tuple[str, str]] = field(default_factory=set)
    acked: set[tuple[str, str]] = field(default_factory=set)
    fired: dict[tuple[str, str], set[int]] = field(default_factory=dict)

    def covered(self, key: tuple[str, str], at: float) -> bool:
        labels = _labels(key)
        return any(
            s.created_at <= at < s.ends_at and all(labels[k] == v for k, v in s.matchers.items())
            for s in self.silences.values()
        )


def _check(notices: list[Notice], acc: Account, before: float, removed: str | None, mode_before: str) -> None:
    # Which open, unacknowledged alerts a silence held before this step and none holds now.
    after = {sid: s for sid, s in acc.silences.items() if sid != removed}
    freed = set()
    for key in acc.open - acc.acked:
        held_after = Account(silences=after).covered(key, acc.now)
        if acc.covered(key, before) and not held_after:
            freed.add(key)
    for key in {(n.sensor, n.rule) for n in notices} | freed:
        unsilenced = [n for n in notices if n.kind == "unsilenced" and (n.sensor, n.rule) == key]
        assert len(unsilenced) == (1 if key in freed else 0), (key, notices)

    acc.silences = after
    raised_now: list[tuple[str, str]] = []
    for notice in notices:
        key = (notice.sensor, notice.rule)
        told = notice.notify or notice.kind in ("repeated", "escalated", "unsilenced")
        if told:
            assert not acc.covered(key, acc.now), f"{notice} while a silence is active"
        else:
            assert notice.silenced is not None and acc.covered(key, acc.now), notice
        rule = RULES[notice.rule]
        if notice.kind == "raised":
            assert not rule.modes or acc.mode in rule.modes, f"{notice} in mode {acc.mode}"
            assert key not in acc.open, f"{notice} raised twice"
            acc.open.add(key)
            acc.acked.discard(key)
            acc.fired[key] = set()
            raised_now.append(key)
        elif notice.kind == "cleared":
            assert key in acc.open, notice
            acc.open.discard(key)
        else:
            assert key in acc.open and key not in acc.acked, f"{notice} for an alert not open or acknowledged"
        if notice.kind == "escalated":
            assert 1 <= notice.level <= len(rule.escalate)
            assert notice.level not in acc.fired[key], f"level {notice.level} fired twice for {key}"
            acc.fired[key].add(notice.level)
    if acc.mode != mode_before:
        # A switch into a rule's modes with its condition holding raises it once, then
        # (checked on `motion`: no `for`, no cooldown).
        rule = RULES["motion"]
        if mode_before not in rule.modes and acc.mode in rule.modes:
            for sensor in ("s1", "s2"):
                key = (sensor, "motion")
                if acc.values.get(sensor, 0) > 70 and key not in acc.open - set(raised_now):
                    assert raised_now.count(key) == 1, (key, notices)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(steps)
def test_lifecycle_keeps_spec_promises(sequence: list[tuple[float, tuple[Any, ...]]]) -> None:
    acc = Account()
    policy = Policy(CONFIG, now=0.0)
    made = 0
    for dt, op in sequence:
        before, mode_before, removed = acc.now, acc.mode, None
        acc.now += dt
        now = acc.now
        if op[0] == "read":
            acc.values[op[1]] = op[2]
            notices = policy.reading(op[1], op[2], now)
        elif op[0] == "ack":
            keys = sorted(acc.open) or PAIRS
            acked = keys[op[1] % len(keys)]
            notices = policy.acknowledge(acked[0], acked[1], now)
        elif op[0] == "silence":
            made += 1
            silence = Silence(
                id=f"x{made}",
                **{k: MATCHERS[op[1]].get(k) for k in ("sensor", "zone", "rule", "severity")},
                comment=None,
                created_by="test",
                created_at=now,
                ends_at=now + op[2],
            )
            notices = policy.add_silence(silence, now)
        elif op[0] == "unsilence":
            ids = sorted(acc.silences)
            removed = ids[op[1] % len(ids)] if ids else "none"
            notices = policy.remove_silence(removed, now)
        elif op[0] == "mode":
            acc.mode = op[1]
            notices = policy.set_mode(op[1], now)
        else:
            acc.now += op[1]
            now = acc.now
            notices = policy.tick(now)
        _check(notices, acc, before, removed, mode_before)
        if op[0] == "ack" and acked in acc.open:
            acc.acked.add(acked)
        if op[0] == "silence":
            acc.silences[silence.id] = silence
        if op[0] == "tick":
            # Every timer due by now has fired: the next one lies ahead.
            deadline = policy.next_deadline()
            assert deadline is None or deadline > now, (deadline, now)


def _silence(id: str, now: float, seconds: float, **matchers: str) -> Silence:
    keys = {k: matchers.get(k) for k in ("sensor", "zone", "rule", "severity")}
    return Silence(id=id, **keys, comment=None, created_by="test", created_at=now, ends_at=now + seconds)


def _seen(notices: list[Notice]) -> list[tuple[str, str, int, bool]]:
    return [(n.kind, n.rule, n.level, n.notify) for n in notices]


def test_a_silence_over_an_open_alert_holds_its_repeats_and_steps_then_notifies_it_once() -> None:
    policy = Policy(CONFIG, now=0.0)
    assert _seen(policy.reading("s1", 60, 1.0)) == [("raised", "hot", 0, True)]
    assert _seen(policy.add_silence(_silence("m", 2.0, 7200, sensor="s1"), 2.0)) == []
    held = [n for t in range(3, 7200, 1) for n in policy.tick(float(t))]
    assert held == []  # 2 hours: both steps and every repeat (each 30s) held back
    assert policy.suppressed == 239
    # At its end, notified once, as if raised then: repeat and escalation count from here.
    assert _seen(policy.tick(7202.0)) == [("unsilenced", "hot", 0, True)]
    assert _seen(policy.tick(7211.0)) == []
    assert _seen(policy.tick(7212.0)) == [("escalated", "hot", 1, True)]
    assert _seen(policy.tick(7222.0)) == [("escalated", "hot", 2, True)]
    assert _seen(policy.tick(7232.0)) == [("repeated", "hot", 0, True)]


def test_raised_and_cleared_under_a_silence_are_shown_but_not_told() -> None:
    policy = Policy(CONFIG, now=0.0)
    policy.add_silence(_silence("m", 0.0, 60, zone="a"), 0.0)
    raised = policy.reading("s1", 60, 1.0)
    assert raised == [Notice("raised", "s1", "hot", "m", notify=False)]
    assert policy.tick(55.0) == []  # its steps (10s, 20s) and its repeat (30s) held back
    assert policy.reading("s1", 0, 56.0) == [Notice("cleared", "s1", "hot", "m", notify=False)]
    assert policy.suppressed == 3  # the raise, the repeat, the clear
    assert policy.tick(61.0) == []  # nothing open when it ends: nothing to tell


def test_acknowledging_stops_the_steps_to_come() -> None:
    policy = Policy(CONFIG, now=0.0)
    policy.reading("s1", 60, 0.0)
    assert _seen(policy.tick(10.0)) == [("escalated", "hot", 1, True)]
    policy.acknowledge("s1", "hot", 11.0)
    assert policy.tick(1000.0) == [] and policy.next_deadline() is None
    # Acknowledged: a silence that ends says nothing of it.
    policy.add_silence(_silence("m", 1001.0, 5, rule="hot"), 1001.0)
    assert policy.tick(1010.0) == []


def test_a_switch_into_the_mode_raises_a_holding_condition_once() -> None:
    policy = Policy(CONFIG, now=0.0)
    assert policy.reading("s2", 80, 1.0) == []
    assert _seen(policy.set_mode("away", 2.0)) == [("raised", "motion", 0, True)]
    assert policy.set_mode("night", 3.0) == [] and policy.set_mode("away", 4.0) == []
    with pytest.raises(ModeError, match=r"^unknown mode 'holiday' \(known: home, away, night\)$"):
        policy.set_mode("holiday", 5.0)
    assert policy.mode == "away"
