"""A sensor's escalation steps (SPEC §10): each once, while its alert is active, unacknowledged and
not silenced. Part of `consumers.sensor.SensorConsumer`, which keeps the timers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from gateway.config import Action, Rule, Sensor
from gateway.engine.escalation import due_levels, next_deadline
from gateway.engine.rules import SensorRules
from gateway.ops import logs, metrics

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logs.sensors


class Escalation:
    runtime: Runtime
    sensor: Sensor
    rules: SensorRules
    lock: asyncio.Lock
    # rule id -> [alert id, loop time its escalation counts from, the last level fired]
    escalating: dict[str, list[Any]]

    def _labels(self, rule: Rule) -> dict[str, str]:
        raise NotImplementedError

    def _loop_time(self, epoch: float) -> float:
        raise NotImplementedError

    def _schedule(self) -> None:
        raise NotImplementedError

    async def _run(self, actions: list[Action], alert: dict[str, Any]) -> None:
        raise NotImplementedError

    def _restore_escalation(self) -> None:
        """Escalation deadlines as stored, taken at the first connection: a step due while the gateway
        was stopped fires now, once, and its actions reach the broker."""
        restored = self.runtime.escalating.pop(self.sensor.id, [])
        for alert in restored:
            since = (alert.notify_from or alert.raised_at).timestamp()
            self.escalating.setdefault(alert.rule, [alert.id, self._loop_time(since), alert.escalation or 0])
        if restored:
            self._schedule()

    # Escalation: each step once, while the alert is active, unacknowledged and not silenced

    def _escalation_deadline(self) -> float | None:
        deadlines = []
        for rule_id, (_, since, fired) in self.escalating.items():
            rule = self._rule(rule_id)
            if rule is None or self.runtime.alerting.silencing(self._labels(rule)):
                continue
            due = next_deadline(since, "active", False, rule.escalate, fired)
            if due is not None:
                deadlines.append(due)
        return min(deadlines, default=None)

    def _rule(self, rule_id: str) -> Rule | None:
        return next((rule for rule in self.rules.rules if rule.id == rule_id), None)

    async def _escalate(self, now: float) -> None:
        for rule_id, entry in list(self.escalating.items()):
            rule = self._rule(rule_id)
            if rule is None or self.runtime.alerting.silencing(self._labels(rule)):
                continue  # a reload removed it, or a silence holds it (its end counts again)
            alert_id, since, fired = entry
            for level in due_levels(since, "active", False, rule.escalate, fired, now):
                entry[2] = level
                step = rule.escalate[level - 1]
                try:
                    change = await self.runtime.book.escalate(alert_id, level, tuple(step.notify))
                except Exception as err:
                    log.error("alert %s: could not store escalation step %d (%s)", alert_id, level, err)
                    entry[2] = level - 1
                    break
                if change is None:
                    continue  # fired already (before a restart, or by another process), or over
                metrics.escalation_steps.labels(str(level)).inc()
                await self.runtime.broadcast(change)
                log.info("alert %s escalated to level %d: %s", alert_id, level, change.alert["message"])
                await self._run(step.actions, change.alert)
            if entry[2] >= len(rule.escalate):
                self.escalating.pop(rule_id, None)
