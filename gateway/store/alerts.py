"""`AlertBook`: alerts and their events in the database, each event numbered by the site's `seq`.

Every change is written (alert row, event row, counter) in one transaction
before anyone hears of it, so a broadcast never announces what a restart would
forget, and `resume` can replay from the event log. What a change is, is decided by
the pure lifecycle (`gateway.engine.alerts`); the clock is read here, and passed in.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from channels.db import database_sync_to_async as sync_to_async  # closes a broken or stale connection first
from django.conf import settings
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Count

from gateway.config import Rule, Sensor
from gateway.engine import alerts as lifecycle
from gateway.engine.alerts import OPEN_STATES, AlertChange, AlertRecord
from gateway.engine.formats import Value
from gateway.store.models import Alert, AlertEvent, SensorState, SiteCounter

__all__ = ["AlertBook"]

# The columns the lifecycle's record holds: all of them.
_ALERT_FIELDS = tuple(f.name for f in dataclasses.fields(AlertRecord))


class AlertBook:
    def __init__(self, site: str) -> None:
        self.site = site

    async def start(self) -> int:
        """Ready to write (gateway.store.journal replays its file here); the entries replayed."""
        return 0

    async def close(self) -> None:
        """Everything written (gateway.store.journal's waiting entries)."""

    # Writes: one transaction each; the caller broadcasts the returned change.

    # The writes below are plain SQL, each field's value adapted by the field itself: the
    # ORM built every query anew on each call, which cost more than running it (SQLite).

    def _record(self, event: str, alert: AlertRecord, seq: int, now: datetime) -> AlertChange:
        snapshot = alert.as_json()
        _insert(AlertEvent, site=self.site, seq=seq, event=event, alert_id=alert.id, alert=snapshot, at=now)
        return AlertChange.make(event, seq, snapshot, alert.groups)

    def _reading(self, sensor_id: str, value: Value | None, online: bool | None, now: datetime) -> None:
        # The reading behind a change is saved with it: after a crash, the rules must not
        # start from an older value than the alerts they see (the board saves lazily).
        row = {"site": self.site, "sensor": sensor_id, "value": value, "online": online, "updated_at": now}
        _insert(SensorState, **row, conflict=("site", "sensor"))

    def raise_sync(
        self,
        rule: Rule,
        sensor: Sensor,
        value: Value | None,
        online: bool | None = True,
        message: str | None = None,
        silenced: str | None = None,
        cause: float | None = None,
    ) -> AlertChange | None:
        """A new alert; None when this rule already has one open for this sensor.

        `message`: the text as it is, instead of the rule's template (the gateway's own alerts).
        `silenced`: the id of the silence over it (gateway.alerting decides).
        `cause`: when the reading that raises it was received (wall clock), given by processes
        sharing a subscription: each acts on what the other received too (a reading can reach
        one before the other's report of an earlier one), so the database decides. The alert's
        `raised_at` is then that time, and a reading that raised an alert once raises none again:
        a process that acts late (its write waited for the database) finds the alert its peer
        raised for that reading already cleared by the next one, and must not raise it anew.
        """
        for _ in range(5):
            try:
                with transaction.atomic():
                    # Taken first (the counter row's lock): raises of this site are serialized,
                    # so the check below holds. Undone when nothing is raised, so no seq is skipped.
                    seq = _next_seq(self.site)
                    now = _now() if cause is None else datetime.fromtimestamp(cause, UTC)
                    if self._open(rule.id, sensor.id) is not None or (
                        cause is not None and self._acted(rule.id, sensor.id, "raised_at", now)
                    ):
                        transaction.set_rollback(True)
                        return None
                    self._reading(sensor.id, value, online, now)
                    alert = lifecycle.raise_alert(rule, sensor, value, self.site, now, message, silenced)
                    _insert(Alert, **{name: getattr(alert, name) for name in _ALERT_FIELDS})
                    return self._record("raised", alert, seq, now)
            except IntegrityError:
                continue  # an id collision: draw again
        raise RuntimeError("could not draw a free alert id")

    def acknowledge_sync(self, alert_id: str, by: str) -> AlertChange:
        with transaction.atomic():
            seq = _next_seq(self.site)  # the counter first, as every write: one lock order, no deadlock
            rows = Alert.objects.select_for_update().filter(site=self.site, id=alert_id.strip().lower())
            row, now = rows.first(), _now()
            alert = lifecycle.acknowledge(alert_id, None if row is None else _alert(row), by, now)
            _update(alert, "state", "acknowledged_at", "acknowledged_by")
            return self._record("acknowledged", alert, seq, now)

    def clear_sync(
        self,
        rule_id: str,
        sensor_id: str,
        value: Value | None,
        online: bool | None = True,
        shown: str | None = None,
        cause: float | None = None,
    ) -> AlertChange | None:
        """The open alert of this rule and sensor cleared by `value` (`shown`: as it reads).

        `cause`: as for `raise_sync`; a reading that cleared an alert once clears none again
        (a late process would clear the alert a newer reading raised)."""
        with transaction.atomic():
            seq = _next_seq(self.site)  # the counter first, as every write: one lock order, no deadlock
            now = _now() if cause is None else datetime.fromtimestamp(cause, UTC)
            open_alert = self._open(rule_id, sensor_id)
            if cause is not None and self._acted(rule_id, sensor_id, "cleared_at", now):
                open_alert = None
            alert = lifecycle.clear(open_alert, value, now, shown)
            if alert is None:
                transaction.set_rollback(True)
                return None
            self._reading(sensor_id, value, online, now)
            _update(alert, "state", "cleared_at", "value", "display")
            return self._record("cleared", alert, seq, now)

    def repeat_sync(self, rule_id: str, sensor_id: str) -> AlertChange | None:
        with transaction.atomic():
            seq = _next_seq(self.site)  # the counter first, as every write: one lock order, no deadlock
            alert = lifecycle.repeat(self._open(rule_id, sensor_id))
            if alert is None:
                transaction.set_rollback(True)
                return None
            return self._record("repeated", alert, seq, _now())

    def escalate_sync(self, alert_id: str, level: int, notify: tuple[str, ...]) -> AlertChange | None:
        """Escalation step `level` of an alert; None when it must not fire (see lifecycle.escalate).

        The row decides, under its lock: a step fires once across processes and restarts.
        The event goes to the alert's own groups and to the step's `notify` groups, which
        become the alert's own from then on.
        """
        with transaction.atomic():
            seq = _next_seq(self.site)  # the counter first, as every write: one lock order, no deadlock
            row = Alert.objects.select_for_update().filter(site=self.site, id=alert_id).first()
            alert = lifecycle.escalate(None if row is None else _alert(row), level)
            if alert is None:
                transaction.set_rollback(True)
                return None
            # Its later events (acknowledged, cleared) go to the step's groups too: their
            # Telegram chats got a message about it, which those events edit.
            alert = dataclasses.replace(alert, groups=tuple(sorted({*alert.groups, *notify})))
            _update(alert, "escalation", "groups")
            return self._record("escalated", alert, seq, _now())

    def release_sync(
        self, silence_id: str, over: Callable[[dict[str, str]], str | None]
    ) -> list[AlertChange]:
        """The open alerts a silence held, once it ended: each is held by `over(labels)` (another
        silence's id) or, if none and still active, notified now (an `unsilenced` event).

        Once: the rows move off the ended silence under their lock, so a second process finds none.
        """
        with transaction.atomic():
            seq = _next_seq(self.site)  # the counter first, as every write: one lock order, no deadlock
            rows = Alert.objects.select_for_update().filter(
                site=self.site, silenced=silence_id, state__in=OPEN_STATES
            )
            now, changes = _now(), list[AlertChange]()
            for row in rows.order_by("raised_at"):
                held = _alert(row)
                alert = lifecycle.unsilence(held, over(held.labels), now)
                _update(alert, "silenced", "notify_from")
                if alert.silenced is None and alert.state == "active":
                    if changes:
                        seq = _next_seq(self.site)  # the counter row is ours until the commit
                    changes.append(self._record("unsilenced", alert, seq, now))
            if not changes:
                _give_back_seq(self.site)  # nothing to announce: no seq is skipped
            return changes

    def cover_sync(self, silence_id: str, matchers: dict[str, str]) -> int:
        """A new silence over the open alerts it matches that no silence holds yet: their ids marked."""
        if not matchers:
            return 0
        rows = Alert.objects.filter(site=self.site, state__in=OPEN_STATES, silenced__isnull=True)
        return rows.filter(**matchers).update(silenced=silence_id)

    def escalating_sync(self) -> list[AlertRecord]:
        """The active alerts whose rule may still escalate: read at start-up for their timers."""
        rows = Alert.objects.filter(site=self.site, state="active").order_by("raised_at")
        return [_alert(row) for row in rows]

    def unsaved(
        self, event: str, rule: Rule, sensor: Sensor, value: Value | None, raised: dict[str, Any] | None
    ) -> AlertChange:
        """A raise or clear the database would not take, announced all the same (AlertChange.unsaved)."""
        return AlertChange.unsaved(event, rule, sensor, value, raised, _now())

    def _open(self, rule_id: str, sensor_id: str) -> AlertRecord | None:
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
        return _alert(rows[0]) if rows else None

    def _acted(self, rule_id: str, sensor_id: str, column: str, at: datetime) -> bool:
        """Whether an alert of this rule and sensor was raised (cleared) by the reading received at `at`."""
        # Indexed: raised_at by (site, -raised_at), cleared_at by (site, rule, sensor, cleared_at).
        qn = connection.ops.quote_name
        field = Alert._meta.get_field(column)
        sql = (
            f"SELECT 1 FROM {qn(Alert._meta.db_table)} WHERE {qn('site')} = %s AND {qn(field.column)} = %s "
            f"AND {qn('rule')} = %s AND {qn('sensor')} = %s LIMIT 1"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [self.site, field.get_db_prep_value(at, connection), rule_id, sensor_id])
            return cursor.fetchone() is not None

    # Reads

    def open_alerts_sync(self) -> list[dict[str, Any]]:
        rows = Alert.objects.filter(site=self.site, state__in=OPEN_STATES).order_by("-raised_at")
        return [_alert(a).as_json() for a in rows]

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
        return [_alert(a).as_json() for a in rows.order_by("-raised_at")[:limit]]

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
    escalate = sync_to_async(escalate_sync)
    release = sync_to_async(release_sync)
    cover = sync_to_async(cover_sync)
    escalating = sync_to_async(escalating_sync)


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


def _give_back_seq(site: str) -> None:
    """Undo this transaction's `_next_seq` (its lock is still held, so no one took a later one)."""
    table = connection.ops.quote_name(SiteCounter._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET seq = seq - 1 WHERE site = %s", [site])


def _insert(model: Any, conflict: tuple[str, ...] = (), **values: Any) -> None:
    """INSERT one row (an upsert on `conflict`) without the ORM's per-call query building."""
    _insert_many(model, [values], conflict)


def _insert_many(
    model: Any, rows: list[dict[str, Any]], conflict: tuple[str, ...] = (), where: str = ""
) -> None:
    """INSERT rows with the same keys (upserts on `conflict`, where `where` holds), many rows a statement.

    One statement of many VALUES, not an executemany: SQLite's module lets go of the GIL around
    each statement it steps, and in a storm the event loop's thread holds the GIL, so this (the
    journal's copy, in the database thread) waited up to the 5 ms switch interval per row to get
    it back. A key (`conflict`) must not repeat among the rows.
    """
    if not rows:
        return
    meta = model._meta
    fields = [meta.get_field(name) for name in rows[0]]
    qn = connection.ops.quote_name
    columns = ", ".join(qn(f.column) for f in fields)
    marks = "(" + ", ".join(["%s"] * len(fields)) + ")"
    adapt = [_adapter(f) for f in fields]
    params = [[a(row[f.name]) for f, a in zip(fields, adapt, strict=True)] for row in rows]
    head = f"INSERT INTO {qn(meta.db_table)} ({columns}) VALUES "
    tail = ""
    if conflict:
        keys = ", ".join(qn(meta.get_field(name).column) for name in conflict)
        changes = ", ".join(
            f"{qn(f.column)} = excluded.{qn(f.column)}" for f in fields if f.name not in conflict
        )
        tail = f" ON CONFLICT ({keys}) DO UPDATE SET {changes}"
        if where:
            tail += f" WHERE {where}"
    size = max(1, connection.ops.bulk_batch_size(fields, rows))  # the backend's limit of parameters
    with connection.cursor() as cursor:
        for start in range(0, len(params), size):
            chunk = params[start : start + size]
            values = ", ".join([marks] * len(chunk))
            cursor.execute(head + values + tail, [value for row in chunk for value in row])


# The fields whose values of this exact type the SQLite module takes as they are.
_PLAIN = {
    "CharField": str,
    "TextField": str,
    "IntegerField": int,
    "BigIntegerField": int,
    "PositiveSmallIntegerField": int,
    "FloatField": float,
    "BooleanField": bool,
}


def _adapter(field: Any) -> Callable[[Any], Any]:
    """`field.get_db_prep_save`, shortened for SQLite's common cases (a test checks they agree).

    Django's own took half of the journal's copy (5 calls deep per value: the datetime's time zone
    checked and converted, a JSON value wrapped and dumped), in the thread that shares the GIL
    with the event loop.
    """
    if connection.vendor != "sqlite" or not settings.USE_TZ or str(connection.timezone) != "UTC":
        return lambda value: field.get_db_prep_save(value, connection)
    if isinstance(field, models.DateTimeField):

        def stamp(value: Any) -> Any:
            if value is None:
                return None
            if type(value) is datetime and value.tzinfo is UTC:
                return str(value.replace(tzinfo=None))  # as Django stores it: naive UTC
            return field.get_db_prep_save(value, connection)

        return stamp
    if isinstance(field, models.JSONField) and field.encoder is None:
        return lambda value: None if value is None else json.dumps(value)
    plain = _PLAIN.get(field.get_internal_type())
    if plain is not None:  # taken as it is when it is of the field's own type
        return lambda value: (
            value if value is None or type(value) is plain else field.get_db_prep_save(value, connection)
        )
    return lambda value: field.get_db_prep_save(value, connection)


def _alert(row: Alert) -> AlertRecord:
    values = {name: getattr(row, name) for name in _ALERT_FIELDS}
    return AlertRecord(**{**values, "groups": tuple(values["groups"])})


def _update(alert: AlertRecord, *names: str) -> None:
    """UPDATE these fields of the alert's row, like Alert.save(update_fields=names), minus the ORM."""
    meta = Alert._meta
    fields = [meta.get_field(name) for name in names]
    qn = connection.ops.quote_name
    assignments = ", ".join(f"{qn(f.column)} = %s" for f in fields)
    params = [f.get_db_prep_save(getattr(alert, f.attname), connection) for f in fields]
    params.append(meta.pk.get_db_prep_value(alert.id, connection))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {qn(meta.db_table)} SET {assignments} WHERE {qn(meta.pk.column)} = %s", params
        )
