"""`SensorStore`: the sensor board (`gateway.engine.board`), loaded from the database and written behind."""

from __future__ import annotations

import asyncio

from channels.db import database_sync_to_async as sync_to_async  # closes a broken or stale connection first

from gateway.config import Sensor
from gateway.engine.board import SensorBoard
from gateway.engine.formats import Value
from gateway.ops import logs
from gateway.store.models import SensorState

__all__ = ["SensorStore"]


class SensorStore(SensorBoard):
    """Writes are batched: a chatty sensor costs one row update per flush, not one per message."""

    def __init__(self, site: str, sensors: list[Sensor], flush_interval: float = 1.0) -> None:
        super().__init__(sensors)
        self.site = site
        self.flush_interval = flush_interval
        self._dirty: set[str] = set()
        self._flusher: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None

    def load_sync(self) -> None:
        for row in SensorState.objects.filter(site=self.site, sensor__in=list(self.sensors)):
            snap = self.sensors[row.sensor]
            snap.value, snap.online, snap.updated_at = row.value, row.online, row.updated_at
            if row.updated_at is not None:
                snap.remember(row.value, row.updated_at)

    load = sync_to_async(load_sync)

    def update(self, sensor_id: str, value: Value | None, online: bool | None, ts: float) -> bool:
        changed = super().update(sensor_id, value, online, ts)
        if sensor_id in self.sensors:
            self._dirty.add(sensor_id)
            if self._flusher is None:
                loop = asyncio.get_running_loop()
                self._flusher = loop.call_later(self.flush_interval, self._start_flush)
        return changed

    def _start_flush(self) -> None:
        self._flusher = None
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        dirty, self._dirty = self._dirty & set(self.sensors), set()
        if not dirty:
            return
        rows = [
            SensorState(site=self.site, sensor=s.id, value=s.value, online=s.online, updated_at=s.updated_at)
            for s in (self.sensors[i] for i in dirty)
        ]
        try:
            await sync_to_async(_upsert)(rows)
        except Exception as err:  # a locked or full database must not stop the sensors
            logs.sensors.error("could not save sensor state (%s); will retry", err)
            self._dirty |= dirty
            asyncio.get_running_loop().call_later(self.flush_interval * 5, self._start_flush)


def _upsert(rows: list[SensorState]) -> None:
    SensorState.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["site", "sensor"],
        update_fields=["value", "online", "updated_at"],
    )
