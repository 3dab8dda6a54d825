"""`SensorBoard`: each sensor's last value and online state, in memory; time is a parameter.

`gateway.store.sensors.SensorStore` loads it from the database and writes it behind.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.config import Sensor
from gateway.engine.alerts import iso
from gateway.engine.display import Presented, display, plain
from gateway.engine.formats import Value

__all__ = ["SensorBoard", "SensorSnapshot"]

# The dashboard's chart of a numeric sensor: the last RECENT_POINTS readings, at
# most one per RECENT_SPACING seconds (a later reading in the same slot replaces it).
RECENT_POINTS = 120
RECENT_SPACING = 1.0


@dataclass
class SensorSnapshot:
    id: str
    name: str
    zone: str
    # How its value reads (unit, device class, labels): its config entry.
    presented: Presented | None = field(default=None, repr=False)
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
        presented = self.presented
        return {
            "id": self.id,
            "name": self.name,
            "zone": self.zone,
            "value": self.value,
            "online": self.online,
            "updated_at": iso(self.updated_at),
            "unit": presented.unit if presented else "",
            "device_class": presented.device_class if presented else "",
            "display": display(self.value, presented) if presented else plain(self.value),
        }


class SensorBoard:
    def __init__(self, sensors: list[Sensor]) -> None:
        self.sensors = {s.id: SensorSnapshot(s.id, s.name, s.zone, s) for s in sensors}

    def configure(self, sensors: list[Sensor]) -> None:
        """After a reload: new sensors appear, removed ones go, names and zones follow the config."""
        wanted = {s.id: s for s in sensors}
        for sensor_id in list(self.sensors):
            if sensor_id not in wanted:
                del self.sensors[sensor_id]
        for sensor in sensors:
            snap = self.sensors.setdefault(sensor.id, SensorSnapshot(sensor.id, sensor.name, sensor.zone))
            snap.name, snap.zone, snap.presented = sensor.name, sensor.zone, sensor

    def update(self, sensor_id: str, value: Value | None, online: bool | None, ts: float) -> bool:
        """Record a reading received at `ts` (epoch seconds); True when value or online state changed."""
        snap = self.sensors.get(sensor_id)
        if snap is None:
            return False
        changed = snap.value != value or type(snap.value) is not type(value) or snap.online != online
        snap.read(value, online, ts)
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


def _parse_iso(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
