"""`AlertBook`: alerts and their events in the database, each event numbered by the site's `seq`.

Every change is written (alert row, event row, counter) in one transaction
before anyone hears of it, so a broadcast never announces what a restart would
forget, and `resume` can replay from the event log.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from channels.db import database_sync_to_async as sync_to_async  # closes a broken or stale connection first
from django.db import IntegrityError, connection, transaction
from django.db.models import Count

from gateway.config import Rule, Sensor
from gateway.engine.formats import Value
from gateway.engine.templates import render_message
from gateway.store.models import Alert, AlertEvent, SensorState, SiteCounter

__all__ = ["AckRefused", "AlertBook", "AlertChange"]

# Short ids to type on a phone: no 0/o, 1/l/i.
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
OPEN_STATES = ("active", "acknowledged")


class AckRefused(Exception):
    """An acknowledgement that cannot be applied; the message says why."""


def alert_groups(rule: Rule, sensor: Sensor) -> list[str]:
    """The channel-layer groups an alert of this rule and sensor goes to ("alerts" first)."""
    return sorted({"alerts", f"alerts.{sensor.zone}", f"sensor.{sensor.id}", *rule.notify})


def new_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(6))


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_json(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "rule": alert.rule,
        "sensor": alert.sensor,
        "zone": alert.zone,
        "severity": alert.severity,
        "state": alert.state,
        "message": alert.message,
        "value": alert.value,
        "raised_at": iso(alert.raised_at),
        "acknowledged_at": iso(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by,
        "cleared_at": iso(alert.cleared_at),
    }


@dataclass(frozen=True)
class AlertChange:
    event: str  # raised | acknowledged | cleared | repeated
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
        if not saved:
            envelope["saved"] = False
        return cls(event, seq, alert, groups, json.dumps(envelope, separators=(",", ":")), saved)

    @classmethod
    def unsaved(
        cls, event: str, rule: Rule, sensor: Sensor, value: Value | None, raised: dict[str, Any] | None
    ) -> AlertChange:
        """A raise or clear the database would not take: the alert as it would have been stored."""
        now = _now()
        alert = (
            dict(raised)
            if raised
            else alert_json(
                Alert(
                    id=new_id(),
                    rule=rule.id,
                    sensor=sensor.id,
                    zone=sensor.zone,
                    severity=rule.severity,
                    state="active",
                    message=render_message(rule.message, rule, sensor, value, ""),
                    value=value,
                    raised_at=now,
                )
            )
        )
        if event == "cleared":
            alert.update(state="cleared", cleared_at=iso(now), value=value)
        return cls.make(event, 0, alert, tuple(alert_groups(rule, sensor)), saved=False)

    @property
    def envelope(self) -> dict[str, Any]:
        return {"type": "alert", "event": self.event, "seq": self.seq, "alert": self.alert}


class AlertBook:
    def __init__(self, site: str) -> None:
        self.site = site

    # Writes: one transaction each; the caller broadcasts the returned change.

    # The writes below are plain SQL, each field's value adapted by the field itself: the
    # ORM built every query anew on each call, which cost more than running it (SQLite).

    def _record(self, event: str, alert: Alert, seq: int) -> AlertChange:
        snapshot = alert_json(alert)
        row = {"site": self.site, "seq": seq, "event": event, "alert_id": alert.id, "alert": snapshot}
        _insert(AlertEvent, **row, at=_now())
        return AlertChange.make(event, seq, snapshot, tuple(alert.groups))

    def _reading(self, sensor_id: str, value: Value | None, online: bool | None) -> None:
        # The reading behind a change is saved with it: after a crash, the rules must not
        # start from an older value than the alerts they see (the board saves lazily).
        row = {"site": self.site, "sensor": sensor_id, "value": value, "online": online, "updated_at": _now()}
        _insert(SensorState, **row, conflict=("site", "sensor"))

    def raise_sync(
        self,
        rule: Rule,
        sensor: Sensor,
        value: Value | None,
        online: bool | None = True,
        message: str | None = None,
    ) -> AlertChange | None:
        """A new alert; None when this rule already has one open for this sensor.

        `message`: the text as it is, instead of the rule's template (the gateway's own alerts).

        Only one process raises for a given message, but two processes with shared
        subscriptions can race on messages a millisecond apart: the database decides.
        """
        groups = alert_groups(rule, sensor)
        for _ in range(5):
            try:
                with transaction.atomic():
                    # Taken first (the counter row's lock): raises of this site are serialized,
                    # so the check below holds. Undone when nothing is raised, so no seq is skipped.
                    seq = _next_seq(self.site)
                    if self._open(rule.id, sensor.id) is not None:
                        transaction.set_rollback(True)
                        return None
                    self._reading(sensor.id, value, online)
                    alert = Alert(
                        id=new_id(),
                        site=self.site,
                        rule=rule.id,
                        sensor=sensor.id,
                        zone=sensor.zone,
                        severity=rule.severity,
                        state="active",
                        message=message or render_message(rule.message, rule, sensor, value, self.site),
                        value=value,
                        groups=groups,
                        raised_at=_now(),
                    )
                    _insert(
                        Alert, **{f.attname: getattr(alert, f.attname) for f in Alert._meta.concrete_fields}
                    )
                    return self._record("raised", alert, seq)
            except IntegrityError:
                continue  # an id collision: draw again
        raise RuntimeError("could not draw a free alert id")

    def acknowledge_sync(self, alert_id: str, by: str) -> AlertChange:
        with transaction.atomic():
            seq = _next_seq(self.site)  # the counter first, as every write: one lock order, no deadlock
            alert = (
                Alert.objects.select_for_update().filter(site=self.site, id=alert_id.strip().lower()).first()
            )
            if alert is None:
                raise AckRefused(f"no alert with id {alert_id!r}")
            if alert.state == "cleared":
                raise AckRefused(f"alert {alert.id} is already cleared")
            if alert.state == "acknowledged":
                raise AckRefused(f"alert {alert.id} was already acknowledged by {alert.acknowledged_by}")
            alert.state, alert.acknowledged_at, alert.acknowledged_by = "acknowledged", _now(), by
            _update(alert, "state", "acknowledged_at", "acknowledged_by")
            return self._record("acknowledged", alert, seq)

    def clear_sync(
        self, rule_id: str, sensor_id: str, value: Value | None, online: bool | None = True
    ) -> AlertChange | None:
        with transaction.atomic():
            seq = _next_seq(self.site)  # the counter first, as every write: one lock order, no deadlock
            alert = self._open(rule_id, sensor_id)
            if alert is None:
                transaction.set_rollback(True)
                return None
            self._reading(sensor_id, value, online)
            alert.state, alert.cleared_at, alert.value = "cleared", _now(), value
            _update(alert, "state", "cleared_at", "value")
            return self._record("cleared", alert, seq)

    def repeat_sync(self, rule_id: str, sensor_id: str) -> AlertChange | None:
        with transaction.atomic():
            seq = _next_seq(self.site)  # the counter first, as every write: one lock order, no deadlock
            alert = self._open(rule_id, sensor_id)
            if alert is None or alert.state != "active":
                transaction.set_rollback(True)
                return None
            return self._record("repeated", alert, seq)

    def _open(self, rule_id: str, sensor_id: str) -> Alert | None:
        # Alert.objects.select_for_update().filter(...).order_by("-raised_at").first(), written out.
        qn = connection.ops.quote_name
        states = ", ".join(["%s"] * len(OPEN_STATES))
        lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
        sql = (
            f"SELECT * FROM {qn(Alert._meta.db_table)} WHERE {qn('site')} = %s AND {qn('rule')} = %s "
            f"AND {qn('sensor')} = %s AND {qn('state')} IN ({states}) "
            f"ORDER BY {qn('raised_at')} DESC LIMIT 1{lock}"
        )
        rows = list(Alert.objects.raw(sql, [self.site, rule_id, sensor_id, *OPEN_STATES]))
        return rows[0] if rows else None

    # Reads

    def open_alerts_sync(self) -> list[dict[str, Any]]:
        rows = Alert.objects.filter(site=self.site, state__in=OPEN_STATES).order_by("-raised_at")
        return [alert_json(a) for a in rows]

    def open_counts_sync(self) -> dict[str, int]:
        """Open alerts by state ("active", "acknowledged"): one COUNT query, cheap enough for a status."""
        rows = (
            Alert.objects.filter(site=self.site, state__in=OPEN_STATES)
            .order_by()
            .values_list("state")
            .annotate(n=Count("id"))
        )
        return {state: n for state, n in rows}

    def open_rules_sync(self) -> dict[str, dict[str, bool]]:
        """sensor id -> {rule id: acknowledged} for every open alert."""
        result: dict[str, dict[str, bool]] = {}
        for sensor, rule, state in Alert.objects.filter(site=self.site, state__in=OPEN_STATES).values_list(
            "sensor", "rule", "state"
        ):
            result.setdefault(sensor, {})[rule] = state == "acknowledged"
        return result

    def list_sync(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        rows = Alert.objects.filter(site=self.site)
        if state == "open":
            rows = rows.filter(state__in=OPEN_STATES)
        elif state:
            rows = rows.filter(state=state)
        return [alert_json(a) for a in rows.order_by("-raised_at")[:limit]]

    def seq_sync(self) -> int:
        counter = SiteCounter.objects.filter(site=self.site).first()
        return counter.seq if counter else 0

    def events_after_sync(self, seq: int, limit: int = 1000, until: int | None = None) -> list[AlertChange]:
        """The stored events after `seq` (up to `until`, if given), oldest first, at most `limit`."""
        rows = AlertEvent.objects.filter(site=self.site, seq__gt=seq)
        if until is not None:
            rows = rows.filter(seq__lte=until)
        rows = rows.order_by("seq")[:limit]
        return [AlertChange.make(r.event, r.seq, r.alert) for r in rows]

    def snapshot_sync(self) -> tuple[int, list[dict[str, Any]]]:
        """(seq, open alerts) read together, so no event falls between them."""
        with transaction.atomic():
            return self.seq_sync(), self.open_alerts_sync()

    raise_alert = sync_to_async(raise_sync)
    acknowledge = sync_to_async(acknowledge_sync)
    clear = sync_to_async(clear_sync)
    repeat = sync_to_async(repeat_sync)
    open_alerts = sync_to_async(open_alerts_sync)
    open_counts = sync_to_async(open_counts_sync)
    open_rules = sync_to_async(open_rules_sync)
    list_alerts = sync_to_async(list_sync)
    seq = sync_to_async(seq_sync)
    events_after = sync_to_async(events_after_sync)
    snapshot = sync_to_async(snapshot_sync)


def _now() -> datetime:
    return datetime.now(UTC)


def _next_seq(site: str) -> int:
    """The site's next `seq`, in one upsert that holds the counter row until the transaction ends.

    Processes sharing the database serialise here (PostgreSQL: the row lock; SQLite: the
    write lock BEGIN IMMEDIATE already holds), so seq strictly increases across all of them.
    """
    table = connection.ops.quote_name(SiteCounter._meta.db_table)
    upsert = (
        f"INSERT INTO {table} (site, seq) VALUES (%s, 1) "
        f"ON CONFLICT (site) DO UPDATE SET seq = {table}.seq + 1"
    )
    with connection.cursor() as cursor:
        if connection.features.can_return_columns_from_insert:  # SQLite 3.35+, PostgreSQL
            cursor.execute(upsert + " RETURNING seq", [site])
        else:
            cursor.execute(upsert, [site])
            cursor.execute(f"SELECT seq FROM {table} WHERE site = %s", [site])
        return int(cursor.fetchone()[0])


def _insert(model: Any, conflict: tuple[str, ...] = (), **values: Any) -> None:
    """INSERT one row (an upsert on `conflict`) without the ORM's per-call query building."""
    meta = model._meta
    fields = [meta.get_field(name) for name in values]
    qn = connection.ops.quote_name
    columns = ", ".join(qn(f.column) for f in fields)
    marks = ", ".join(["%s"] * len(fields))
    params = [f.get_db_prep_save(values[f.name], connection) for f in fields]
    sql = f"INSERT INTO {qn(meta.db_table)} ({columns}) VALUES ({marks})"
    if conflict:
        keys = ", ".join(qn(meta.get_field(name).column) for name in conflict)
        changes = ", ".join(
            f"{qn(f.column)} = excluded.{qn(f.column)}" for f in fields if f.name not in conflict
        )
        sql += f" ON CONFLICT ({keys}) DO UPDATE SET {changes}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _update(obj: Any, *names: str) -> None:
    """UPDATE these fields of one row by primary key, like obj.save(update_fields=names), minus the ORM."""
    meta = obj._meta
    fields = [meta.get_field(name) for name in names]
    qn = connection.ops.quote_name
    assignments = ", ".join(f"{qn(f.column)} = %s" for f in fields)
    params = [f.get_db_prep_save(getattr(obj, f.attname), connection) for f in fields]
    params.append(meta.pk.get_db_prep_value(obj.pk, connection))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {qn(meta.db_table)} SET {assignments} WHERE {qn(meta.pk.column)} = %s", params
        )
