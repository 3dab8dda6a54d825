"""`HistoryStore`: sensor history (SPEC §11) written behind, in batches, off the alert path.

Readings are folded in memory into one point per sensor per minute (gateway.engine.history); a task
writes the points of each ended minute a second after its end, every point in one statement run, and
deletes rows older than `[history] keep` at start and hourly. Its database work runs on a thread of
its own, so an alert's write never queues behind a batch or a retention sweep.

Only readings this process received are written (`own`): with a shared subscription each MQTT process
writes its share, and rows of one minute from two processes merge in the database (min of the mins,
max of the maxes, the later last), so no reading is written twice and none is lost. Readings told by
peers, or (in a web process of the split mode) by the MQTT process's sensor events, are shown only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from django.db import close_old_connections, connection, transaction

from gateway.engine.alerts import iso
from gateway.engine.history import MINUTE, MinutePoint, MinuteRecorder, merge_points, minute_of, numeric
from gateway.ops import logs, metrics
from gateway.store.models import SensorMinute

__all__ = ["HistoryStore", "delete_older_sync", "read_sync", "write_sync"]

# A minute is written this long after its end (readings received just before it are in by then).
SETTLE = 1.0
# After a failed write, the next try (each minute must be stored within 25 s of its end).
RETRY = 5.0
RETENTION_EVERY = 3600.0

log = logs.sensors
T = TypeVar("T")


class HistoryStore:
    def __init__(self, site: str, keep: float) -> None:
        self.site = site
        self.keep = keep  # seconds; 0: no history (a reload may change it)
        self.recorder = MinuteRecorder()
        self._executor: ThreadPoolExecutor | None = None
        self._writer: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def record(self, sensor_id: str, value: Any, ts: float, own: bool = True) -> None:
        """A reading received at `ts` (epoch seconds); anything but a finite number is not history."""
        if self.keep > 0:
            number = numeric(value)
            if number is not None:
                self.recorder.record(sensor_id, number, ts, own)

    # The writer (processes that receive readings: those with MQTT)

    def start(self) -> None:
        self._writer = asyncio.ensure_future(self._write_minutes())

    async def _write_minutes(self) -> None:
        swept = 0.0
        delay = 0.0
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return  # stop() writes what is left
            except TimeoutError:
                pass
            now = time.time()
            if self.keep > 0 and now - swept >= RETENTION_EVERY:
                if await self.delete_older(now):
                    swept = now
            written = await self.write(self.recorder.take_ended(now))
            now = time.time()
            delay = RETRY if not written else minute_of(now) + MINUTE + SETTLE - now

    async def stop(self) -> None:
        """A graceful stop: every unwritten point, the current minute's too, is written."""
        self._stopping.set()
        if self._writer is not None:
            await self._writer  # not cancelled: a batch on its way is written, or given back
        await self.write(self.recorder.take_all())

    async def write(self, points: list[tuple[str, MinutePoint]]) -> bool:
        if not points:
            return True
        try:
            await self._run(write_sync, self.site, points)
        except Exception as err:  # a locked or full database must not lose them: next time
            log.error("could not save %d history point(s) (%s); will retry", len(points), err)
            metrics.deliveries.labels("history", "failed").inc()
            self.recorder.give_back(points)
            return False
        return True

    async def delete_older(self, now: float) -> bool:
        try:
            deleted = await self._run(delete_older_sync, self.site, now - self.keep)
        except Exception as err:
            log.error("could not delete old history (%s); will retry", err)
            return False
        if deleted:
            log.info("history: deleted %d point(s) older than %s", deleted, _iso_minute(int(now - self.keep)))
        return True

    # The API

    async def points(self, sensor_id: str, since: float, now: float) -> list[dict[str, Any]]:
        """The sensor's points from the minute `since` seconds before `now` on, oldest first: those
        written, merged with those in memory (the current minute, and any not yet written)."""
        first = minute_of(now - since)
        stored = await self._run(read_sync, self.site, sensor_id, first)
        points = {p.minute: p for p in stored}
        for minute, point in self.recorder.shown(sensor_id, first).items():
            known = points.get(minute)
            points[minute] = point if known is None else merge_points(known, point)
        return [points[m].as_json(_iso_minute(m)) for m in sorted(points)]

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="history")
        return await asyncio.get_running_loop().run_in_executor(self._executor, _fresh, fn, args)


def _fresh(fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    close_old_connections()  # as channels' database_sync_to_async: a broken or stale one goes first
    return fn(*args)


def _iso_minute(minute: int) -> str:
    return iso(datetime.fromtimestamp(minute, UTC)) or ""


def write_sync(site: str, points: list[tuple[str, MinutePoint]]) -> None:
    """Store these points, each merged with a row of its minute already there (see the module's doc)."""
    table = connection.ops.quote_name(SensorMinute._meta.db_table)
    least, greatest = ("LEAST", "GREATEST") if connection.vendor == "postgresql" else ("MIN", "MAX")
    sql = (
        f'INSERT INTO {table} (site, sensor, minute, "min", "max", "last", last_ms) '
        "VALUES (%s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (site, sensor, minute) DO UPDATE SET "
        f'"min" = {least}({table}."min", excluded."min"), '
        f'"max" = {greatest}({table}."max", excluded."max"), '
        f'"last" = CASE WHEN excluded.last_ms >= {table}.last_ms '
        f'THEN excluded."last" ELSE {table}."last" END, '
        f"last_ms = {greatest}({table}.last_ms, excluded.last_ms)"
    )
    rows = [(site, s, p.minute, p.min, p.max, p.last, p.last_ms) for s, p in points]
    with transaction.atomic(), connection.cursor() as cursor:  # one write lock for the batch
        cursor.executemany(sql, rows)


def delete_older_sync(site: str, before: float) -> int:
    """Delete the points of minutes that started before `before` (epoch seconds); how many went."""
    deleted, _ = SensorMinute.objects.filter(site=site, minute__lt=int(before)).delete()
    return deleted


def read_sync(site: str, sensor_id: str, first: int) -> list[MinutePoint]:
    rows = SensorMinute.objects.filter(site=site, sensor=sensor_id, minute__gte=first).order_by("minute")
    return [
        MinutePoint(m, lo, hi, last, ms)
        for m, lo, hi, last, ms in rows.values_list("minute", "min", "max", "last", "last_ms")
    ]
