"""sd_notify(3) in a few lines of our own: state datagrams to `$NOTIFY_SOCKET` for a `Type=notify` unit.

Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from gateway.ops import logs

log = logs.server


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
