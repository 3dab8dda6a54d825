"""`SensorConsumer`: one per configured sensor; parses its payloads, runs its rules, acts on them.

Parsing lives in gateway.engine.formats, rules in gateway.engine.rules, the alert lifecycle in
gateway.engine.alerts and its persistence in gateway.store.alerts: this class only wires them to
MQTT events and channel groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import Any

from consumers.escalation import Escalation
from gateway.config import Action, Rule, Sensor
from gateway.engine.alerts import AlertChange
from gateway.engine.display import display
from gateway.engine.formats import FieldMissing, PayloadError, Value, parse_availability, read_value
from gateway.engine.rules import SensorRules, Transition
from gateway.engine.silences import labels
from gateway.engine.templates import fill_payload
from gateway.engine.text import compact_json
from gateway.ops import logs, metrics
from gateway.runtime import Runtime, SensorEngine
from protocols.mqtt.consumer import MqttConsumer
from protocols.mqtt.types import MqttConnectEvent, MqttMessageEvent

log = logs.sensors
_bad_input_log = logs.RateLimit(interval=30.0)
_cooldown_log = logs.RateLimit(interval=60.0)
_handled_ok = metrics.mqtt_messages.labels("ok")  # labels() looks the child up on every call

# Dashboards hear of a chatty sensor at most this often; the last reading always arrives.
SENSOR_EVENT_INTERVAL = 0.5


class SensorConsumer(Escalation, MqttConsumer):
    runtime: Runtime
    sensor: Sensor
    rules: SensorRules

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Ended or failed: the server starts a failed instance again, which must find no
            # timer, listener or group membership of this one still acting for the sensor.
            await self._leave()

    async def _serve(self, *args: Any) -> None:
        # Set up at once, not at the first event: an instance started again after a failure
        # gets no mqtt.connect, and its sensor's timers and peers' readings must not wait.
        self._setup()
        await super()._serve(*args)

    def _setup(self) -> bool:
        """Take the sensor's rule engine (once, at the start); False for a sensor a reload removed."""
        if hasattr(self, "rules"):
            return self.sensor.id in self.runtime.board.sensors
        self.runtime = self.scope["gateway"]
        config = self.runtime.config
        sensor = config.sensors_by_id.get(self.scope["device"])
        if sensor is None:
            return False
        self.sensor = sensor
        self.loop = asyncio.get_running_loop()
        engine = self.runtime.engines.get(sensor.id)
        alerting = self.runtime.alerting
        if engine is None:  # the first instance since start-up; a restarted one goes on with it
            rules = SensorRules(sensor, config.rules_for(sensor), self.loop.time(), alerting.mode)
            snap = self.runtime.board.sensors[sensor.id]
            rules.restore(
                self.runtime.open_rules.get(sensor.id, {}), snap.value, snap.online, self.loop.time()
            )
            engine = self.runtime.engines[sensor.id] = SensorEngine(rules)
        self.engine = engine
        self.rules, self.lock, self.announced = engine.rules, engine.lock, engine.announced
        self.escalating = engine.escalating
        # Readings handled in the MQTT reader's call (MqttConsumer.eager): on the in-memory layer
        # nothing before a handler's first wait needs a task (a Redis client's timeouts do).
        self.eager = config.gateway.channel_layer == "memory"
        self.tasks: set[asyncio.Task[None]] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.last_sensor_event = 0.0
        self.sensor_event_due: asyncio.TimerHandle | None = None
        self.runtime.reload_listeners.add(self._reconfigure)
        alerting.listeners.add(self._site_changed)
        # Shared subscriptions hand each message to one of several processes: they tell each other
        # what they saw (gateway.layers.peers), so every process's rule state stays the same.
        self.peers = self.runtime.peers
        if self.peers is not None:
            self.peers.handlers[self.sensor.id] = self.peer_observed
        self._schedule()
        if self.channel_layer is not None:
            self._spawn(self.channel_layer.group_add(f"sensor.{sensor.id}", self.channel_name))
        return True

    def _reconfigure(self) -> None:
        """A reload: the sensor's new settings and rules; rules kept by id keep their state."""
        sensor = self.runtime.config.sensors_by_id.get(self.sensor.id)
        if sensor is None:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            return  # removed: the server ends this instance
        self.sensor = sensor
        self.rules.reconfigure(sensor, self.runtime.config.rules_for(sensor))
        # A rule's new modes may let one the mode held back raise now; escalation steps are read
        # from the rules as they are, so changed ones count from each alert's start as before.
        transitions = self.rules.release_held(self.loop.time())
        if transitions:
            self._apply_in_order(transitions, None)
        self._schedule()

    def _loop_time(self, epoch: float) -> float:
        return self.loop.time() - (time.time() - epoch)

    def _site_changed(self, what: str) -> None:
        """The site's mode switched (a rule may raise now), or its silences changed (timers)."""
        if what == "mode" and self.rules.mode != self.runtime.alerting.mode:
            transitions = self.rules.set_mode(self.runtime.alerting.mode, self.loop.time())
            if transitions:
                self._apply_in_order(transitions, None)
        self._schedule()

    def _labels(self, rule: Rule) -> dict[str, str]:
        return labels(self.sensor, rule)

    def _count_held_back(self) -> None:
        for rule in self.rules.held_back:
            metrics.mode_suppressed.labels(rule.id).inc()
            log.info(
                "sensor %s: rule %s not raised: the site is in mode %s",
                self.sensor.id,
                rule.id,
                self.rules.mode,
            )
        self.rules.held_back.clear()

    async def mqtt_connect(self, event: MqttConnectEvent) -> None:
        if self._setup():
            self._restore_escalation()

    async def mqtt_message(self, event: MqttMessageEvent) -> None:
        if not self._setup():
            return  # a message that was on its way when a reload removed the sensor
        now, received = self.loop.time(), time.time()
        max_payload = self.runtime.config.mqtt.max_payload
        kind: str
        value: Value
        try:
            if event["topic"] == self.sensor.availability_topic:
                sensor = self.sensor
                value = parse_availability(
                    event["payload"], max_payload, sensor.payload_available, sensor.payload_not_available
                )
                transitions = self.rules.on_availability(value, now)
                kind = "available"
            else:
                value = read_value(event["payload"], self.sensor, max_payload)
                transitions = self.rules.on_value(value, now, retained=event["retain"])
                kind = "value"
        except FieldMissing as err:
            if event["topic"] == self.sensor.result_topic or self.sensor.id in self.runtime.discovered.ids:
                # RESULT answers every command; most are about something else. A discovered device's
                # state topic feeds each of its sensors, and a message may carry only some of them.
                metrics.mqtt_messages.labels("ignored").inc()
            else:
                self._bad_payload(event["topic"], err)
            return
        except PayloadError as err:
            self._bad_payload(event["topic"], err)
            return
        if self.rules.dropped:
            self._cooldown_dropped()
        if self.rules.held_back:
            self._count_held_back()
        if self.peers is not None:
            self.peers.observe(self.sensor.id, received, kind, value, bool(event["retain"]))
        # Dashboards hear of a reading from the process that got it, not once per process.
        changed = self.runtime.board.update(self.sensor.id, self.rules.value, self.rules.online, received)
        # Processes sharing a subscription both act on a reading: the database tells (AlertBook).
        cause = received if self.peers is not None else None
        if transitions and not self.engine.applying and not self.lock.locked():
            # Nothing of this sensor's is being stored or waits to be: stored and announced here,
            # without a task to wake (0.05 ms); the order of readings holds.
            async with self.lock:
                await self._apply(transitions, received, cause)
            if changed:
                self._sensor_changed()
        elif transitions:
            applied = self._apply_in_order(transitions, received, cause)
            if changed:
                # The alert first: the tile's update would share the loop (and the GIL) with its
                # database write and its hand-over (1.1 ms per group send on Redis).
                applied.add_done_callback(lambda _: self._sensor_changed())
            await applied
        elif changed:
            self._sensor_changed()
        # After the alert, which is what someone waits for: the chart's point and the count.
        if kind == "value" and not event["retain"]:  # a retained one is an old reading, kept by the broker
            self.runtime.history.record(self.sensor.id, value, received)
        _handled_ok.inc()
        self._schedule()

    def peer_observed(self, at: float, kind: str, value: Any, retain: bool) -> None:
        """What a peer process received (shared subscriptions, gateway.layers.peers): the same state here.

        Called for each reading of a peer's batch, in order, with no task unless an alert changes.
        """
        now = self.loop.time() - max(0.0, time.time() - at)
        if kind == "available":
            transitions = self.rules.on_availability(bool(value), now, local=False)
        else:
            transitions = self.rules.on_value(value, now, retained=retain, local=False)
            if not retain:  # shown here, written by the peer that received it
                self.runtime.history.record(self.sensor.id, value, at, own=False)
        self.runtime.board.update(self.sensor.id, self.rules.value, self.rules.online, time.time())
        if transitions:
            # A raise or clear seen here too is acted on here too (the peer that received the reading
            # acts on it as well): the database keeps one alert per rule and sensor open, so the
            # second attempt changes nothing. A report older than a reading already applied here
            # changed nothing (SensorRules._stale). Timers stay with their owner.
            transitions = [replace(t, local=True) if t.kind in ("raise", "clear") else t for t in transitions]
            self._apply_in_order(transitions, None, at)
        self._schedule()

    def _apply_in_order(
        self, transitions: list[Transition], received: float | None, cause: float | None = None
    ) -> asyncio.Task[None]:
        """Store and announce these changes after those of earlier readings (ours, the peers', timers')."""
        task = asyncio.ensure_future(self._apply_locked(transitions, received, cause))
        self.tasks.add(task)
        self.engine.applying += 1
        task.add_done_callback(self._applied)
        return task

    def _applied(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.engine.applying -= 1

    async def _apply_locked(
        self, transitions: list[Transition], received: float | None, cause: float | None
    ) -> None:
        async with self.lock:
            await self._apply(transitions, received, cause)

    def _bad_payload(self, topic: str, err: PayloadError) -> None:
        metrics.mqtt_messages.labels("bad_payload").inc()
        metrics.bad_input.labels("mqtt", "payload").inc()
        allowed, held = _bad_input_log.allow(self.sensor.id)
        if allowed:
            log.warning(
                "sensor %s: ignored a message on %s: %s%s",
                self.sensor.id,
                topic,
                err,
                f" ({held} similar not logged)" if held else "",
            )

    def _cooldown_dropped(self) -> None:
        # Dropped, not delayed (docs/configuration.md): said, so a second try that does nothing is explained.
        for rule in self.rules.dropped:
            metrics.cooldown_drops.labels(rule.id).inc()
            allowed, held = _cooldown_log.allow(f"{self.sensor.id}\0{rule.id}")
            if allowed:
                log.info(
                    "sensor %s: rule %s matched within %gs of its last raise (cooldown): not raised again%s",
                    self.sensor.id,
                    rule.id,
                    rule.cooldown,
                    f" ({held} more not logged)" if held else "",
                )
        self.rules.dropped.clear()

    # Alert transitions and rule actions

    async def _apply(
        self, transitions: list[Transition], received: float | None = None, cause: float | None = None
    ) -> None:
        """`received`: when the reading came here (latency); `cause`: when it came to whichever
        process got it, for processes sharing a subscription (AlertBook.raise_sync)."""
        book, sensor = self.runtime.book, self.sensor
        for t in transitions:
            if not t.local:
                continue  # the peer process that saw its cause acts on it
            change: AlertChange | None
            actions: list[Action] = []
            alerting = self.runtime.alerting
            silenced = alerting.silencing(self._labels(t.rule)) if alerting.silences else None
            try:
                if t.kind == "raise":
                    actions = t.rule.on_raise
                    change = await book.raise_alert(
                        t.rule, sensor, t.value, self.rules.online, silenced=silenced, cause=cause
                    )
                elif t.kind == "clear":
                    actions = t.rule.on_clear
                    shown = display(t.value, sensor)
                    change = await book.clear(
                        t.rule.id, sensor.id, t.value, self.rules.online, shown, cause=cause
                    )
                elif silenced:
                    # A repeat is only a notification: under a silence nothing goes out.
                    metrics.notifications_suppressed.labels("repeated").inc()
                    continue
                else:
                    change = await book.repeat(t.rule.id, sensor.id)
            except Exception as err:
                # The database is locked, full or gone. The alert still goes out to whoever is
                # connected (marked unsaved, seq 0), and its actions run: a siren must sound.
                log.error(
                    "sensor %s: could not store the %s of rule %s (%s); announcing it unsaved",
                    sensor.id,
                    t.kind,
                    t.rule.id,
                    err,
                )
                metrics.deliveries.labels("database", "failed").inc()
                known = self.announced.pop(t.rule.id, None)
                if t.kind == "raise":
                    change = book.unsaved("raised", t.rule, sensor, t.value, None)
                elif t.kind == "clear" and known is not None:
                    change = book.unsaved("cleared", t.rule, sensor, t.value, known[0])
                else:
                    continue
            else:
                if change is None and t.kind == "clear":
                    known = self.announced.pop(t.rule.id, None)
                    if known is not None and not known[1]:
                        # Raised while the database was away: clear what the clients were told of.
                        change = book.unsaved("cleared", t.rule, sensor, t.value, known[0])
            if change is not None:
                if change.event == "raised":
                    self.announced[t.rule.id] = (change.alert, change.saved)
                    if t.rule.escalate and change.saved:
                        self.escalating[t.rule.id] = [change.alert["id"], self.loop.time(), 0]
                elif change.event == "cleared":
                    self.announced.pop(t.rule.id, None)
                    self.escalating.pop(t.rule.id, None)
            if change is None:
                continue
            await self.runtime.broadcast(change, received)
            # After the hand-over: the line costs 80 us (formatting, stderr to the journal).
            log.info("alert %s %s: %s", change.alert["id"], change.event, change.alert["message"])
            if change.alert.get("silenced") or silenced:
                # Raised (or cleared) and shown, but held back from people: no actions, no messages.
                metrics.notifications_suppressed.labels(change.event).inc()
                continue
            await self._run(actions, change.alert)

    async def _run(self, actions: list[Action], alert: dict[str, Any]) -> None:
        for action in actions:
            await self.publish(
                action.topic, fill_payload(action.payload, alert).encode("utf-8"), action.qos, action.retain
            )

    # Timers: `for`, `repeat` and `expire_after` come due without a message.

    def _schedule(self) -> None:
        deadline = self.rules.next_deadline()
        if self.escalating and (step := self._escalation_deadline()) is not None:
            deadline = step if deadline is None else min(deadline, step)
        timer = self.timer
        if timer is not None:
            if deadline is not None and timer.when() <= deadline and not timer.cancelled():
                # Kept: a reading moves `expire_after` later on every message; the timer that
                # comes due early finds nothing to do and schedules the next (_tick).
                return
            timer.cancel()
            self.timer = None
        if deadline is not None:
            self.timer = self.loop.call_at(deadline, self._due)

    def _due(self) -> None:
        self.timer = None
        self._spawn(self._tick())

    async def _tick(self) -> None:
        was_online = self.rules.online
        now = self.loop.time()
        transitions = self.rules.tick(now)
        if self.rules.dropped:
            self._cooldown_dropped()
        if self.rules.held_back:
            self._count_held_back()
        if self.rules.online != was_online:
            self.runtime.board.update(self.sensor.id, self.rules.value, self.rules.online, time.time())
            self._sensor_changed()
        if transitions:
            await self._apply_in_order(transitions, None)
        if self.escalating:
            async with self.lock:  # after the changes before it: a clear stops the steps to come
                await self._escalate(now)
        self._schedule()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # Sensor state to dashboards, throttled per sensor

    def _sensor_changed(self) -> None:
        if self.sensor_event_due is not None:
            return
        now = self.loop.time()
        wait = self.last_sensor_event + SENSOR_EVENT_INTERVAL - now
        if wait <= 0:
            # Marked sent now, not when the task runs: the readings of one batch would each start one.
            self.last_sensor_event = now
            self._spawn(self._send_sensor_event())
        else:
            self.sensor_event_due = self.loop.call_later(wait, self._sensor_event_due)

    def _sensor_event_due(self) -> None:
        self.sensor_event_due = None
        self.last_sensor_event = self.loop.time()
        self._spawn(self._send_sensor_event())

    async def _send_sensor_event(self) -> None:
        snap = self.runtime.board.sensors[self.sensor.id].as_json()
        text = compact_json({"type": "sensor", "sensor": snap})
        await self.runtime.hand_over(
            self.runtime.layer.group_send, "sensors", {"type": "sensor.update", "sensor": snap, "text": text}
        )

    # Alert events of this sensor (group sensor.<id>): only acknowledgements matter here.

    async def alert_acknowledged(self, event: dict[str, Any]) -> None:
        if not self._setup():
            return
        self.rules.acknowledge(event["alert"]["rule"])
        self.escalating.pop(event["alert"]["rule"], None)
        self._schedule()

    async def alert_unsilenced(self, event: dict[str, Any]) -> None:
        """A silence over this alert ended: notified as if raised now (its on_raise actions,
        escalation and repeat counting from now); Telegram hears the same event."""
        if not self._setup():
            return
        alert = event["alert"]
        rule = self._rule(alert["rule"])
        if rule is None:
            return
        now = self.loop.time()
        self.rules.notified(rule.id, now)
        if rule.escalate:
            entry = self.escalating.get(rule.id)
            fired = entry[2] if entry is not None and entry[0] == alert["id"] else (alert["escalation"] or 0)
            self.escalating[rule.id] = [alert["id"], now, fired]
        self._schedule()
        await self._run(rule.on_raise, alert)

    async def alert_raised(self, event: dict[str, Any]) -> None:
        pass

    alert_cleared = alert_repeated = alert_escalated = alert_raised

    async def _leave(self) -> None:
        if not hasattr(self, "rules"):
            return
        for handle in (self.timer, self.sensor_event_due):
            if handle is not None:
                handle.cancel()
        self.runtime.reload_listeners.discard(self._reconfigure)
        self.runtime.alerting.listeners.discard(self._site_changed)
        if self.peers is not None and self.peers.handlers.get(self.sensor.id) == self.peer_observed:
            del self.peers.handlers[self.sensor.id]
        if self.sensor.id not in self.runtime.config.sensors_by_id:
            self.runtime.engines.pop(self.sensor.id, None)  # removed by a reload
        if self.channel_layer is not None:
            with contextlib.suppress(Exception):  # the layer is away: not the cause to report
                await self.channel_layer.group_discard(f"sensor.{self.sensor.id}", self.channel_name)
