"""`SensorBoard`: each sensor's last value and online state, in memory and written behind to the database."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from channels.db import database_sync_to_async as sync_to_async  # closes a broken or stale connection first

from gateway.config import Sensor
from gateway.engine.formats import Value
from gateway.ops import logs
from gateway.store.alerts import iso
from gateway.store.models import SensorState

# The dashboard's chart of a numeric sensor: the last RECENT_POINTS readings, at
# most one per RECENT_SPACING seconds (a later reading in the same slot replaces it).
RECENT_POINTS = 120
RECENT_SPACING = 1.0


@dataclass
class SensorSnapshot:
    id: str
    name: str
    zone: str
    value: Value | None = None
    online: bool | None = None
    # (epoch milliseconds, value) of recent numeric readings; in memory only.
    recent: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=RECENT_POINTS))
    # When it was last updated: a datetime, or the epoch seconds of a reading not yet made one
    # (most readings are followed by another before anyone asks: see `updated_at`).
    _at: datetime | None = field(default=None, repr=False)
    _ts: float | None = field(default=None, repr=False)

    @property
    def updated_at(self) -> datetime | None:
        if self._ts is not None:
            self._at, self._ts = datetime.fromtimestamp(self._ts, UTC), None
        return self._at

    @updated_at.setter
    def updated_at(self, at: datetime | None) -> None:
        self._at, self._ts = at, None

    def read(self, value: Value | None, online: bool | None, ts: float) -> None:
        """A reading received at `ts` (epoch seconds)."""
        self.value, self.online, self._ts = value, online, ts
        self._remember(value, int(ts * 1000))

    def remember(self, value: Value | None, at: datetime) -> None:
        self._remember(value, int(at.timestamp() * 1000))

    def _remember(self, value: Value | None, ms: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        recent = self.recent
        if recent and ms - recent[-1][0] < RECENT_SPACING * 1000:
            recent[-1] = (recent[-1][0], value)
        else:
            recent.append((ms, value))

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "zone": self.zone,
            "value": self.value,
            "online": self.online,
            "updated_at": iso(self.updated_at),
        }


class SensorBoard:
    """Writes are batched: a chatty sensor costs one row update per flush, not one per message."""

    def __init__(self, site: str, sensors: list[Sensor], flush_interval: float = 1.0) -> None:
        self.site = site
        self.flush_interval = flush_interval
        self.sensors = {s.id: SensorSnapshot(s.id, s.name, s.zone) for s in sensors}
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

    def configure(self, sensors: list[Sensor]) -> None:
        """After a reload: new sensors appear, removed ones go, names and zones follow the config."""
        wanted = {s.id: s for s in sensors}
        for sensor_id in list(self.sensors):
            if sensor_id not in wanted:
                del self.sensors[sensor_id]
        for sensor in sensors:
            snap = self.sensors.setdefault(sensor.id, SensorSnapshot(sensor.id, sensor.name, sensor.zone))
            snap.name, snap.zone = sensor.name, sensor.zone

    def update(self, sensor_id: str, value: Value | None, online: bool | None) -> bool:
        """Record a reading; True when value or online state changed."""
        snap = self.sensors.get(sensor_id)
        if snap is None:
            return False
        changed = snap.value != value or type(snap.value) is not type(value) or snap.online != online
        snap.read(value, online, time.time())
        self._dirty.add(sensor_id)
        if self._flusher is None:
            loop = asyncio.get_running_loop()
            self._flusher = loop.call_later(self.flush_interval, self._start_flush)
        return changed

    def apply(self, sensor: dict[str, Any]) -> None:
        """A sensor event from another process (split mode): keep this board current without saving it."""
        snap = self.sensors.get(sensor.get("id", ""))
        if snap is None:
            return
        at = _parse_iso(sensor.get("updated_at"))
        if at is None or (snap.updated_at is not None and at < snap.updated_at):
            return
        snap.value, snap.online, snap.updated_at = sensor.get("value"), sensor.get("online"), at
        snap.remember(snap.value, at)

    def snapshot(self, recent: bool = False) -> list[dict[str, Any]]:
        """Every sensor as JSON; with `recent`, numeric ones carry their recent readings (for charts)."""
        if not recent:
            return [s.as_json() for s in self.sensors.values()]
        return [{**s.as_json(), "recent": [list(p) for p in s.recent]} for s in self.sensors.values()]

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


def _parse_iso(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
