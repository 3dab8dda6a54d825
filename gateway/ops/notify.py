"""sd_notify(3) in a few lines of our own: state datagrams to `$NOTIFY_SOCKET` for a `Type=notify` unit,
and the `Reporter` that says with them how this process is.

Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

from gateway.ops import logs
from gateway.ops.health import Health

log = logs.server

# A protocol down this long stops the watchdog pings, so systemd restarts the process. Long,
# because most outages are outside (broker, internet) where a restart mends nothing and costs
# every dashboard a reconnect; what it does mend is a client wedged inside this process.
WATCHDOG_DOWN_LIMIT = 600.0
# READY=1 waits for Telegram at most this long after the rest is up: a box that boots without
# internet must not fail its start (TimeoutStartSec) and lose MQTT and the dashboard with it.
TELEGRAM_READY_WAIT = 60.0
# How often STATUS= is refreshed when systemd asks for no watchdog pings.
STATUS_SECONDS = 15.0
# How stale the alert count in STATUS= may get: one COUNT query per period, off the ping's path.
COUNT_SECONDS = 10.0


class Notifier:
    def __init__(self, address: str | None) -> None:
        self.address: bytes | None = None
        if address:
            # A leading '@' names a socket in the abstract namespace, which the kernel spells with a NUL.
            self.address = b"\0" + os.fsencode(address[1:]) if address[0] == "@" else os.fsencode(address)
        self._sock: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send `READY=1`, `STATUS=…` and such in one datagram; False if not sent (never raises)."""
        if self.address is None or not assignments:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full receive queue must not block the event loop: drop, the next tick sends again.
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as err:
            if not self._failing:
                log.warning("systemd notification failed: %s", err)
            self._failing = True
            return False
        if self._failing:
            log.info("systemd notifications go through again")
        self._failing = False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between `WATCHDOG=1` pings, half the timeout as sd_watchdog_enabled(3) advises; None if off."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    # WATCHDOG_PID names the process systemd watches; a child that inherited the variable is not it.
    watched = env.get("WATCHDOG_PID", "")
    if watched and watched != str(pid):
        return None
    return usec / 2_000_000


class Reporter:
    """What systemd hears of this process: READY=1 once every enabled protocol is up, WATCHDOG=1
    while it is alive, STATUS= when it changes (with the count of open alerts), STOPPING=1."""

    def __init__(self, notifier: Notifier, health: Health, watchdog: float | None, started: float) -> None:
        self.notifier, self.health, self.watchdog, self.started = notifier, health, watchdog, started
        # The open alerts by state, once the database is there to count them.
        self.count_alerts: Callable[[], Awaitable[dict[str, int]]] | None = None
        self.ready_sent = False
        self._wake = asyncio.Event()
        health.listeners.add(self._wake.set)
        self._alerts: dict[str, int] | None = None
        self._counting: asyncio.Task[None] | None = None
        self._counted_at = float("-inf")

    async def run(self) -> None:
        tick = self.watchdog or STATUS_SECONDS
        sent_status = ""
        withheld: list[str] = []
        while True:
            self._count_alerts_soon()
            fields = []
            if not self.ready_sent and self._ready():
                # Later than the "ready in" log line, which waits for MQTT and the web, not Telegram.
                self.ready_sent = True
                fields.append("READY=1")
                log.info("systemd: READY=1 after %.2fs", time.monotonic() - self.started)
            if self.watchdog is not None:
                # A stalled loop sends nothing anyway; a protocol dead for long is worth a restart as well.
                dead = [p for p in self.health.enabled if self.health.down_for(p) > WATCHDOG_DOWN_LIMIT]
                if dead and not withheld:
                    log.error(
                        "%s down for over %.0fs: no more watchdog pings, systemd will restart the process",
                        ", ".join(dead),
                        WATCHDOG_DOWN_LIMIT,
                    )
                elif withheld and not dead:
                    log.info("every protocol is back: watchdog pings resume")
                withheld = dead
                if not dead:
                    fields.append("WATCHDOG=1")
            status = self.status()
            if status != sent_status:
                fields.append(f"STATUS={status}")
                sent_status = status
            self.notifier.send(*fields)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), tick)

    def _ready(self) -> bool:
        if self.health.connected:  # a sensor failing inside (gateway.faults) must not hold back the start
            return True
        others = [p for p in self.health.enabled if p != "telegram"]
        if len(others) == len(self.health.enabled) or not all(self.health.is_up(p) for p in others):
            return False
        if time.monotonic() - self.started < TELEGRAM_READY_WAIT:
            return False
        log.warning(
            "telegram still down after %.0fs: READY=1 without it; it keeps trying", TELEGRAM_READY_WAIT
        )
        return True

    def status(self) -> str:
        parts = [self.health.summary() or "no protocol servers"]
        if self._alerts is not None:
            active, acknowledged = self._alerts.get("active", 0), self._alerts.get("acknowledged", 0)
            parts.append(f"{active} active alert{'' if active == 1 else 's'}")
            if acknowledged:
                parts.append(f"{acknowledged} acknowledged")
        # One assignment per line in the datagram: a detail must not start another.
        return ", ".join(parts).replace("\n", " ")

    def _count_alerts_soon(self) -> None:
        """Refresh the alert count in the background: a slow database must not hold back a ping."""
        count = self.count_alerts
        if count is None or time.monotonic() < self._counted_at + COUNT_SECONDS:
            return
        if self._counting is not None and not self._counting.done():
            return
        self._counted_at = time.monotonic()
        self._counting = asyncio.ensure_future(self._count_alerts(count))

    async def _count_alerts(self, count: Callable[[], Awaitable[dict[str, int]]]) -> None:
        try:
            counts = await count()
        except Exception as err:
            log.debug("counting open alerts for the systemd status failed: %s", err)
            return
        if counts != self._alerts:
            self._alerts = counts
            self._wake.set()

    def stop(self) -> None:
        if self._counting is not None:
            self._counting.cancel()
        self.notifier.send("STOPPING=1", "STATUS=stopping")
