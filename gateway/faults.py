"""Sensors whose messages keep failing: a fault in /healthz and an alert of their own.

The MQTT server reports an application instance that keeps failing (it restarts it for each
message, so nothing stops), and each instance that handles a message again. A failing sensor
gets an alert of rule `FAULT_RULE` (severity warning) that clears itself once it works.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway.config import Condition, Rule, Sensor
from gateway.ops import logs

if TYPE_CHECKING:
    from gateway.runtime import Runtime

__all__ = ["FAULT_RULE", "DeviceFaults"]

# No rule of the config can have this id (no ":" there), so it never shares an alert with one.
FAULT_RULE = "gateway:messages-failing"
log = logs.sensors


def fault_rule(sensor: Sensor) -> Rule:
    # Built, not validated: its id is one a config may not use. Never evaluated, only raised and cleared.
    return Rule.model_construct(
        id=FAULT_RULE,
        sensor=sensor.id,
        when=Condition(offline=True),
        severity="warning",
        message="sensor {sensor.id}: messages failing",
    )


class DeviceFaults:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # Sensors with an open fault alert (from an earlier run too: see Runtime.load).
        self.open: set[str] = set()
        self._lock = asyncio.Lock()  # raises and clears stored in the order they were reported
        self._tasks: set[asyncio.Task[None]] = set()

    def report(self, device: str, detail: str | None) -> None:
        """`device`'s instance keeps failing (`detail` says with what), or handled a message (None)."""
        sensor = self.runtime.config.sensors_by_id.get(device)
        part = f"sensor {device}" if sensor is not None else f"device {device}"
        self.runtime.health.fault("mqtt", part, None if detail is None else f"messages failing: {detail}")
        if sensor is None or (detail is None and device not in self.open):
            return
        if detail is not None:
            self.open.add(device)
        task = asyncio.ensure_future(self._alert(sensor, detail))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _alert(self, sensor: Sensor, detail: str | None) -> None:
        runtime = self.runtime
        snap = runtime.board.sensors.get(sensor.id)
        # The sensor's reading stays as it is: the alert carries it, the database keeps it.
        value, online = (snap.value, snap.online) if snap is not None else (None, None)
        async with self._lock:
            try:
                if detail is None:
                    self.open.discard(sensor.id)
                    change = await runtime.book.clear(FAULT_RULE, sensor.id, value, online)
                else:
                    message = f"sensor {sensor.id}: messages failing: {detail}"
                    change = await runtime.book.raise_alert(
                        fault_rule(sensor), sensor, value, online, message=message
                    )
            except Exception as err:
                log.error("sensor %s: could not store its fault alert (%s)", sensor.id, err)
                return
            if change is not None:
                await runtime.broadcast(change)
                log.warning("alert %s %s: %s", change.alert["id"], change.event, change.alert["message"])
