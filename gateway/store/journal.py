"""The alert journal: a raise, clear or repeat is durable once one `write(2)` has put it in a file.

With the in-memory channel layer the gateway is one process, so it alone numbers the site's
alert events. `JournaledBook` then keeps the open alerts and `seq` in memory and writes each
change as one line appended to `state_dir/alerts-<site>.journal`, in the event loop's thread,
before anyone hears of it. What `write(2)` returned survives the process (`kill -9`, an
exception, the OOM killer): the kernel holds it, exactly as it holds a SQLite commit under
`synchronous=NORMAL`, the database's setting. A power cut loses what the kernel had not written
out yet in both cases (seconds); `journal_fsync = true` syncs each line first (see
docs/performance.md for what that costs).

The lines are copied into the database in batches (one transaction each, `FLUSH_DELAY` after
the first waiting one), and the file is emptied once everything in it is there. At start-up the
journal is replayed into the database before anything is served, so the database stays the one
place that queries, resumes and Telegram's catch-up read: a read first writes what is waiting,
in the same database thread. Changes that are not on the hot path (acknowledge, escalate, what a
silence does) are written to the database directly, as without the journal, with the journal's
writes held back meanwhile, so `seq` stays one increasing count.

Several processes (the Redis layer, split mode) share `seq` through the database and use
`AlertBook` as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from channels.db import database_sync_to_async as sync_to_async
from django.db import connection, transaction

from gateway.config import Rule, Sensor
from gateway.engine import alerts as lifecycle
from gateway.engine.alerts import OPEN_STATES, AlertChange, AlertRecord
from gateway.engine.formats import Value
from gateway.ops import logs, metrics
from gateway.store.alerts import _ALERT_FIELDS, AlertBook, _alert, _insert_many, _now
from gateway.store.journal_file import Entry, JournalBusy, JournalFile, journal_path
from gateway.store.models import Alert, AlertEvent, SensorState, SiteCounter

__all__ = ["JournalBusy", "JournaledBook", "journal_path"]

T = TypeVar("T")
log = logs.server

# How long the first waiting line waits for company before the batch goes to the database,
# and how many lines make a batch go at once.
FLUSH_DELAY = 0.05
FLUSH_AT = 500
# Alert ids drawn ahead and checked against the database, so that a raise needs no query.
# A storm raises thousands a second while the copy, in a thread, gets the GIL in 5 ms slices.
ID_POOL = 4096
REFILL_BELOW = 3072
RETRY_SECONDS = 1.0


class OtherWriter(RuntimeError):
    """The database's `seq` moved without this process: another process writes this site's alerts."""


class JournaledBook(AlertBook):
    """`AlertBook` with raises, clears and repeats journaled in the loop's thread (see the module)."""

    def __init__(self, site: str, path: Path, fsync: bool = False) -> None:
        super().__init__(site)
        self.journal = JournalFile(path, fsync)
        self.seq_now = 0  # the last seq handed out
        self.open_index: dict[tuple[str, str], AlertRecord] = {}
        self.pending: list[Entry] = []  # journaled, not yet in the database
        self.ids: list[str] = []
        # Ids drawn while the pool was empty (the database away), not checked against it yet.
        self.unchecked: set[str] = set()
        self._db_seq = 0  # what this process last saw in the database's counter (database thread)
        # Held by whatever writes this site's alerts from a thread: "the database thread" is more
        # than one, since Django runs each HTTP request's database calls in a thread of its own
        # (asgiref's ThreadSensitiveContext), so /api/alerts can write what waits beside the copy.
        self._writing = threading.RLock()
        self._gate = asyncio.Lock()  # held by the writes that go to the database directly
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_soon = False  # the timer is for now (FLUSH_AT lines, or ids running out)
        # A copy asked for by an append, to be timed once the alert is out (`_ask`); and for now.
        self._asked = self._asked_now = self._closing = False
        self._flushing: asyncio.Task[None] | None = None
        self._failures = 0

    # Start and stop

    def start_sync(self) -> int:
        """Replay the journal into the database, then read `seq` and the open alerts. Returns the
        number of entries the database did not have yet."""
        entries = self.journal.open()
        self._db_seq = self.seq_sync()
        added = self._write(entries, replay=True)
        self.seq_now = self._db_seq
        self.open_index = self._open_index()
        self.ids = self._draw_ids(set())
        self.journal.empty()
        if added:
            log.warning("alert journal: %d alert events written to the database at start-up", added)
        return added

    async def start(self) -> int:
        return await sync_to_async(self.start_sync)()

    async def close(self) -> None:
        """Everything waiting into the database, the file emptied and unlocked."""
        self._closing = True
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        with contextlib.suppress(Exception):
            await self._flush()
        if not self.pending:
            self.journal.empty()
        self.journal.close()

    # The hot path: in the loop's thread, one write each, no query

    async def raise_alert(
        self,
        rule: Rule,
        sensor: Sensor,
        value: Value | None,
        online: bool | None = True,
        message: str | None = None,
        silenced: str | None = None,
        cause: float | None = None,  # for processes sharing a subscription; the journal has one
    ) -> AlertChange | None:
        if self._gate.locked():
            async with self._gate:
                return self._raise(rule, sensor, value, online, message, silenced)
        return self._raise(rule, sensor, value, online, message, silenced)

    def _raise(
        self,
        rule: Rule,
        sensor: Sensor,
        value: Value | None,
        online: bool | None,
        message: str | None,
        silenced: str | None,
    ) -> AlertChange | None:
        key = (rule.id, sensor.id)
        if key in self.open_index:
            return None
        now = _now()
        alert_id = self.ids[-1] if self.ids else self._unchecked_id()
        alert = lifecycle.raise_alert(rule, sensor, value, self.site, now, message, silenced, alert_id)
        change = self._append("raised", alert, now, (sensor.id, value, online))
        if self.ids:
            self.ids.pop()
        else:
            self.unchecked.add(alert_id)
        self.open_index[key] = alert
        if len(self.ids) < ID_POOL // 16:
            self._ask(now=True)  # nearly out: the copy draws more now, not in 50 ms
        return change

    async def clear(
        self,
        rule_id: str,
        sensor_id: str,
        value: Value | None,
        online: bool | None = True,
        shown: str | None = None,
        cause: float | None = None,  # as for raise_alert
    ) -> AlertChange | None:
        if self._gate.locked():
            async with self._gate:
                return self._clear(rule_id, sensor_id, value, online, shown)
        return self._clear(rule_id, sensor_id, value, online, shown)

    def _clear(
        self, rule_id: str, sensor_id: str, value: Value | None, online: bool | None, shown: str | None
    ) -> AlertChange | None:
        key, now = (rule_id, sensor_id), _now()
        alert = lifecycle.clear(self.open_index.get(key), value, now, shown)
        if alert is None:
            return None
        change = self._append("cleared", alert, now, (sensor_id, value, online))
        del self.open_index[key]
        return change

    async def repeat(self, rule_id: str, sensor_id: str) -> AlertChange | None:
        if self._gate.locked():
            async with self._gate:
                return self._repeat(rule_id, sensor_id)
        return self._repeat(rule_id, sensor_id)

    def _repeat(self, rule_id: str, sensor_id: str) -> AlertChange | None:
        alert = lifecycle.repeat(self.open_index.get((rule_id, sensor_id)))
        if alert is None:
            return None
        return self._append("repeated", alert, _now())

    def _unchecked_id(self) -> str:
        """An id when the pool is empty: the database has been away (or the copy behind) for
        `ID_POOL` raises. Unlike pool ids it may name a stored (cleared) alert, 1 in 887 million
        per stored alert; the copy into the database says so if it does (see `_clashes`)."""
        if not self.unchecked:
            log.warning("alert journal: no checked alert ids left (the database is away or behind)")
        taken = {a.id for a in self.open_index.values()}
        while (alert_id := lifecycle.new_id()) in taken or alert_id in self.unchecked:
            pass
        return alert_id

    def _append(
        self,
        event: str,
        alert: AlertRecord,
        now: datetime,
        reading: tuple[str, Value | None, bool | None] | None = None,
    ) -> AlertChange:
        entry = Entry(self.seq_now + 1, event, now, alert, reading)
        change = AlertChange.make(event, entry.seq, alert.as_json(), alert.groups)
        self.journal.append(entry.line(change.text))  # OSError (disk full): nothing changed, told
        self.seq_now = entry.seq
        self.pending.append(entry)
        self._ask(now=len(self.pending) >= FLUSH_AT)
        return change

    # Writes that go to the database directly: the journal's writes wait for them

    async def acknowledge(self, alert_id: str, by: str) -> AlertChange:
        return await self._direct(self.acknowledge_sync, alert_id, by)

    async def escalate(self, alert_id: str, level: int, notify: tuple[str, ...]) -> AlertChange | None:
        return await self._direct(self.escalate_sync, alert_id, level, notify)

    async def release(
        self, silence_id: str, over: Callable[[dict[str, str]], str | None]
    ) -> list[AlertChange]:
        return await self._direct(self.release_sync, silence_id, over)

    async def cover(self, silence_id: str, matchers: dict[str, str]) -> int:
        return await self._direct(self.cover_sync, silence_id, matchers)

    async def _direct(self, write: Callable[..., T], *args: Any) -> T:
        async with self._gate:
            entries = list(self.pending)

            def run() -> tuple[T, int, dict[tuple[str, str], AlertRecord]]:
                with self._writing:  # another thread's copy would take this write for another writer's
                    self._write(entries)
                    result = write(*args)  # raises (AckRefused...) with its transaction undone
                    self._db_seq = self.seq_sync()
                    return result, self._db_seq, self._open_index()

            result, seq, index = await sync_to_async(run)()
            self._written(entries)
            self.seq_now, self.open_index = seq, index
            return result

    # Reads: what is waiting goes into the database first, in the same database call

    async def _through_database(self, read: Callable[..., T], *args: Any) -> T:
        entries = list(self.pending)

        def run() -> T:
            self._write(entries)
            return read(*args)

        result = await sync_to_async(run)()
        self._written(entries)
        return result

    async def open_alerts(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return await self._through_database(self.open_alerts_sync)

    async def open_counts(self) -> dict[str, int]:  # type: ignore[override]
        return await self._through_database(self.open_counts_sync)

    async def open_rules(self) -> dict[str, dict[str, bool]]:  # type: ignore[override]
        return await self._through_database(self.open_rules_sync)

    async def list_alerts(self, state: str | None, limit: int) -> list[dict[str, Any]]:  # type: ignore[override]
        return await self._through_database(self.list_sync, state, limit)

    async def seq(self) -> int:  # type: ignore[override]
        return await self._through_database(self.seq_sync)

    async def events_after(  # type: ignore[override]
        self, seq: int, limit: int = 1000, until: int | None = None
    ) -> list[AlertChange]:
        return await self._through_database(self.events_after_sync, seq, limit, until)

    async def snapshot(self) -> tuple[int, list[dict[str, Any]]]:  # type: ignore[override]
        return await self._through_database(self.snapshot_sync)

    async def escalating(self) -> list[AlertRecord]:  # type: ignore[override]
        return await self._through_database(self.escalating_sync)

    # The copy into the database

    def _ask(self, now: bool) -> None:
        """A copy, timed by `_schedule` after this callback: the alert's hand-over comes first.

        A timer is 15 Python calls, a tenth of an alert's way from the socket to its frame; this
        asks with one `call_soon`, and not at all while a copy as soon is timed already.
        """
        if self._flush_timer is not None and (self._flush_soon or not now):
            return  # as `_schedule` would: a timer as soon or sooner is kept
        self._asked_now = self._asked_now or now
        if not self._asked:
            self._asked = True
            asyncio.get_running_loop().call_soon(self._answer)

    def _answer(self) -> None:
        now, self._asked, self._asked_now = self._asked_now, False, False
        if not self._closing:
            self._schedule(0 if now else FLUSH_DELAY)

    def _schedule(self, delay: float) -> None:
        if self._flush_timer is not None:
            # Kept when it is as soon or sooner: in a storm every append asks for a copy now, and
            # replacing the timer each time put the copy off until the storm ended.
            if delay > 0 or self._flush_soon:
                return
            self._flush_timer.cancel()
        self._flush_soon = delay == 0
        self._flush_timer = asyncio.get_running_loop().call_later(delay, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_timer = None
        self._flush_soon = False
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush_task())
        else:
            self._flushing.add_done_callback(lambda _: self._schedule(FLUSH_DELAY))

    async def _flush_task(self) -> None:
        try:
            await self._flush()
        except Exception as err:
            self._failures += 1
            metrics.deliveries.labels("database", "failed").inc()
            if self._failures == 1 or self._failures % 60 == 0:
                log.error(
                    "alert journal: %d alert events not yet in the database (%s); they are safe in %s, "
                    "retrying every %gs",
                    len(self.pending),
                    err,
                    self.journal.path,
                    RETRY_SECONDS,
                )
            self._schedule(RETRY_SECONDS)
        else:
            if self._failures:
                log.info("alert journal: the database took the waiting alert events again")
            self._failures = 0

    async def _flush(self) -> None:
        entries = list(self.pending)
        # New ids must differ from the pool's (any may be taken, and not stored, by the time they
        # are checked) and from the raises waiting to be stored. Drawn before the write: in a
        # storm the write waits long for the GIL, while the pool runs down.
        pool = None
        if len(self.ids) < REFILL_BELOW:
            pool = set(self.ids) | {e.alert.id for e in entries if e.event == "raised"}

        def run() -> list[str]:
            ids = [] if pool is None else self._draw_ids(pool)
            self._write(entries)
            return ids

        ids = await sync_to_async(run)()
        self._written(entries)
        if ids:
            self.ids = [i for i in ids if i not in self.ids] + self.ids

    def _written(self, entries: list[Entry]) -> None:
        """In the loop: these entries are in the database."""
        if not entries:
            return
        upto = entries[-1].seq
        done = 0
        while done < len(self.pending) and self.pending[done].seq <= upto:
            done += 1
        del self.pending[:done]
        if not self.pending:
            self.journal.empty()  # nothing in it is needed any more; appends come from this thread
        elif self._flush_timer is None:
            self._schedule(FLUSH_DELAY)

    # In the database thread

    def _write(self, entries: list[Entry], replay: bool = False) -> int:
        """The entries the database lacks, in one transaction with the counter. Returns how many."""
        with self._writing:  # what the database lacks is known only while no other thread writes
            return self._write_locked(entries, replay)

    def _write_locked(self, entries: list[Entry], replay: bool) -> int:
        todo = [e for e in entries if e.seq > self._db_seq]
        if not todo:
            return 0
        with transaction.atomic():
            seq = self.seq_sync()
            if seq != self._db_seq:
                raise OtherWriter(
                    f"the database's seq of site {self.site!r} is {seq}, this process wrote up to "
                    f'{self._db_seq}: another process writes its alerts. With channel_layer = "memory" '
                    "run one process per database"
                )
            checked = self._clashes(todo, replay)
            # Each statement once for the batch: an alert's last state, every event, each
            # sensor's last reading (unless the sensor board saved a later one).
            alerts = {e.alert.id: e.alert for e in todo}
            rows = [{name: getattr(a, name) for name in _ALERT_FIELDS} for a in alerts.values()]
            _insert_many(Alert, rows, conflict=("id",))
            events = [
                {
                    "site": self.site,
                    "seq": e.seq,
                    "event": e.event,
                    "alert_id": e.alert.id,
                    "alert": e.alert.as_json(),
                    "at": e.at,
                }
                for e in todo
            ]
            _insert_many(AlertEvent, events)
            readings = {e.reading[0]: (e.reading, e.at) for e in todo if e.reading is not None}
            states = [
                {"site": self.site, "sensor": sensor, "value": value, "online": online, "updated_at": at}
                for (sensor, value, online), at in readings.values()
            ]
            _insert_many(SensorState, states, conflict=("site", "sensor"), where=_NEWER)
            _set_seq(self.site, todo[-1].seq)
        self._db_seq = todo[-1].seq
        self.unchecked.difference_update(checked)
        return len(todo)

    def _clashes(self, entries: list[Entry], replay: bool) -> set[str]:
        """Raises whose unchecked id a stored alert already has: logged, the older row replaced.
        Returns the ids checked. At a replay every raise is checked (what was unchecked is forgotten)."""
        new = {
            e.alert.id: e for e in entries if e.event == "raised" and (replay or e.alert.id in self.unchecked)
        }
        if not new:
            return set()
        for row in Alert.objects.filter(id__in=list(new)).only("id", "raised_at"):
            log.error(
                "alert journal: alert %s raised at %s while the database was away took the id of an "
                "alert raised at %s: that alert's row is replaced (its events are kept)",
                row.id,
                new[row.id].alert.raised_at.isoformat(),
                row.raised_at.isoformat(),
            )
        return set(new)

    def _open_index(self) -> dict[tuple[str, str], AlertRecord]:
        rows = Alert.objects.filter(site=self.site, state__in=OPEN_STATES).order_by("raised_at")
        return {(row.rule, row.sensor): _alert(row) for row in rows}  # the latest raise wins

    def _draw_ids(self, pool: set[str]) -> list[str]:
        """`ID_POOL` new alert ids that no stored alert has and `pool` (the ids drawn before) lacks.

        Every raise journaled before this call is stored by now (the caller wrote it first)."""
        fresh: set[str] = set()
        qn = connection.ops.quote_name
        while len(fresh) < ID_POOL:
            # Little Python and few queries: in a storm this thread gets the GIL rarely, the
            # event loop's thread holds it. 500 a query: within any SQLite's limit of parameters.
            candidates = list(set(lifecycle.new_ids(ID_POOL)) - fresh - pool)
            for start in range(0, len(candidates), 500):
                chunk = candidates[start : start + 500]
                marks = ", ".join(["%s"] * len(chunk))
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"SELECT {qn('id')} FROM {qn(Alert._meta.db_table)} WHERE {qn('id')} IN ({marks})",
                        chunk,
                    )
                    taken = {row[0] for row in cursor.fetchall()}
                fresh.update(c for c in chunk if c not in taken)
        return list(fresh)[:ID_POOL]


# A sensor's stored reading is replaced only by a later one (the board saves readings on its own).
_STATE = SensorState._meta.db_table
_NEWER = f"{_STATE}.updated_at IS NULL OR {_STATE}.updated_at <= excluded.updated_at"


def _set_seq(site: str, seq: int) -> None:
    table = connection.ops.quote_name(SiteCounter._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (site, seq) VALUES (%s, %s) "
            "ON CONFLICT (site) DO UPDATE SET seq = excluded.seq",
            [site, seq],
        )
