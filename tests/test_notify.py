"""sd_notify: `gateway.ops.notify` on real datagram sockets, and the gateway process as systemd sees it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.ops.health import Health
from gateway.ops.notify import Notifier, watchdog_interval
from tests.conftest import (
    GatewayFactory,
    GatewayProcess,
    alert_event,
    free_port,
    http_get,
    publish,
    recv_until,
    ws_connect,
)
from tests.telegram_standin import BotApiStandin

WATCHDOG_USEC = 400_000  # pings every 0.2 s


class NotifySocket:
    """systemd's end: a bound datagram socket that keeps every assignment received, with its arrival time."""

    def __init__(self, address: str) -> None:
        self.address = address  # as NOTIFY_SOCKET spells it: a path, or '@name' for the abstract namespace
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.seen: list[tuple[float, str]] = []
        self.sender: GatewayProcess | None = None  # when set, its exit ends a wait at once

    async def receive(self, timeout: float) -> list[str]:
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 4096), timeout)
        lines = data.decode().split("\n")
        now = time.monotonic()
        self.seen += [(now, line) for line in lines]
        return lines

    async def until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Receive until `done()` holds, checked first on what already arrived."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {what} after {timeout}s; got {self.lines()}")
            sender = self.sender
            if sender is not None and sender.proc is not None and sender.proc.poll() is not None:
                raise AssertionError(f"the gateway exited before {what}:\n{sender.log}")
            with contextlib.suppress(TimeoutError):
                await self.receive(min(left, 1.0))

    async def arrival(self, line: str, timeout: float, since: float = 0.0) -> float:
        """When `line` (e.g. "READY=1") first arrived after `since`, waiting for it if need be."""
        await self.until(lambda: line in self.lines(since), timeout, line)
        return next(at for at, seen in self.seen if seen == line and at >= since)

    def drain(self) -> None:
        """Take in whatever is queued (after the sender exited, say)."""
        with contextlib.suppress(BlockingIOError):
            while True:
                data = self.sock.recv(4096)
                self.seen += [(time.monotonic(), line) for line in data.decode().split("\n")]

    def status(self) -> str:
        """The last STATUS= received."""
        return next((line for line in reversed(self.lines()) if line.startswith("STATUS=")), "")

    def lines(self, since: float = 0.0) -> list[str]:
        return [line for at, line in self.seen if at >= since]

    def pings(self, since: float = 0.0) -> list[float]:
        return [at for at, line in self.seen if line == "WATCHDOG=1" and at >= since]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_path(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


@pytest.fixture
def notify_abstract() -> Iterator[NotifySocket]:
    sock = NotifySocket(f"@gateway-test-{os.getpid()}-{time.monotonic_ns()}")
    yield sock
    sock.close()


def start_notified(gw: GatewayProcess, notify: NotifySocket, **env: str) -> None:
    # WATCHDOG_PID stays unset: systemd would name the process it started, here the test's child.
    gw.env.update(NOTIFY_SOCKET=notify.address, **env)
    notify.sender = gw
    gw.start(wait=False)


async def stop_within(gw: GatewayProcess, seconds: float) -> tuple[int, float]:
    """SIGTERM; the exit code and how long the process took to exit."""
    assert gw.proc is not None
    proc, started = gw.proc, time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, seconds)
    gw.proc = None
    return code, time.monotonic() - started


# gateway.ops.notify on its own


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier(None)
    assert not notifier.enabled
    assert notifier.send("READY=1") is False


async def test_datagrams_reach_a_path_socket(notify_path: NotifySocket) -> None:
    notifier = Notifier(notify_path.address)
    assert notifier.send("READY=1", "STATUS=web up, 0 active alerts")
    assert await notify_path.receive(2.0) == ["READY=1", "STATUS=web up, 0 active alerts"]
    assert notifier.send("WATCHDOG=1")
    assert await notify_path.receive(2.0) == ["WATCHDOG=1"]
    notifier.close()


async def test_datagrams_reach_an_abstract_socket(notify_abstract: NotifySocket) -> None:
    notifier = Notifier(notify_abstract.address)
    assert notifier.send("STOPPING=1")
    assert await notify_abstract.receive(2.0) == ["STOPPING=1"]
    notifier.close()


def test_a_missing_socket_is_reported_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert notifier.send("WATCHDOG=1") is False
    assert notifier.send("WATCHDOG=1") is False
    # Once per outage, not once per ping.
    assert len([r for r in caplog.records if "systemd notification failed" in r.getMessage()]) == 1
    notifier.close()


def test_watchdog_interval_is_half_the_timeout_for_this_process_only() -> None:
    pid = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(pid)}, pid) == 0.2
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(pid + 1)}, pid) is None
    for env in ({}, {"WATCHDOG_USEC": ""}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "soon"}):
        assert watchdog_interval(env, pid) is None


def test_health_summary_and_down_time() -> None:
    health = Health(["web", "telegram"])
    changes: list[str] = []
    health.listeners.add(lambda: changes.append(health.summary()))
    health.set("web", True)
    health.set("telegram", False, "starting")
    health.set("telegram", False, "starting")  # no change, no call
    assert changes == ["web up, telegram down", "web up, telegram down (starting)"]
    assert health.down_for("web") == 0.0 and health.down_for("telegram") > 0.0
    health.set("telegram", True, "polling")
    assert health.summary() == "web up, telegram up (polling)" and health.down_for("telegram") == 0.0


# The gateway process under a stand-in for systemd


async def test_ready_watchdog_status_and_stopping(
    gateway_factory: GatewayFactory, notify_path: NotifySocket
) -> None:
    gw = gateway_factory(start=False)
    start_notified(gw, notify_path, WATCHDOG_USEC=str(WATCHDOG_USEC))
    ready = await notify_path.arrival("READY=1", 30.0)
    # READY=1 only once every protocol is up: /healthz agrees, and the "ready in" line is out.
    status, health = await asyncio.to_thread(http_get, f"{gw.url}/healthz")
    assert status == 200, health
    assert "ready in" in gw.log
    await notify_path.until(lambda: len(notify_path.pings(since=ready)) >= 3, 5.0, "3 pings after READY=1")
    await notify_path.until(lambda: "active alert" in notify_path.status(), 15.0, "the alert count")
    assert notify_path.status() == "STATUS=web up, mqtt up, 0 active alerts"
    code, took = await stop_within(gw, 10.0)
    assert code == 0 and took < 10.0, gw.log
    notify_path.drain()
    # STOPPING=1 as the drain starts, and then nothing more.
    assert notify_path.lines()[-2:] == ["STOPPING=1", "STATUS=stopping"]


async def test_no_ready_without_the_broker_and_a_prompt_stop(
    gateway_factory: GatewayFactory, notify_path: NotifySocket
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{free_port()}", start=False)  # nobody listens there
    start_notified(gw, notify_path, WATCHDOG_USEC=str(WATCHDOG_USEC))
    await notify_path.until(
        lambda: notify_path.status().startswith("STATUS=web up, mqtt down"), 30.0, "web up"
    )
    await notify_path.until(lambda: len(notify_path.pings()) >= 3, 5.0, "pings")
    # Nothing to drain while the broker never answered: no waiting for a connection that is not coming.
    code, took = await stop_within(gw, 10.0)
    assert code == 0 and took < 3.0, gw.log
    notify_path.drain()
    assert "READY=1" not in notify_path.lines() and "STOPPING=1" in notify_path.lines()


async def test_watchdog_pings_stop_while_the_loop_stalls(
    gateway_factory: GatewayFactory, notify_abstract: NotifySocket
) -> None:
    gw = gateway_factory(start=False)
    start_notified(
        gw,
        notify_abstract,
        WATCHDOG_USEC=str(WATCHDOG_USEC),
        GATEWAY_DEBUG_STALL_SIGNAL="1",
        GATEWAY_DEBUG_STALL_SECONDS="3",
    )
    ready = await notify_abstract.arrival("READY=1", 30.0)
    await notify_abstract.until(lambda: len(notify_abstract.pings(ready)) >= 2, 5.0, "pings")
    assert gw.proc is not None
    stalled = time.monotonic()
    gw.proc.send_signal(signal.SIGUSR2)

    def resumed() -> bool:
        pings = [stalled, *notify_abstract.pings(since=stalled)]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        return bool(gaps) and max(gaps) > 2.5 and len(pings) - 1 - gaps.index(max(gaps)) >= 3

    # A 3 s stall: no ping for well over the 0.2 s interval, then at least 3 again.
    await notify_abstract.until(resumed, 15.0, "a gap in the pings, then pings again")
    assert "stalling the event loop" in gw.log
    code, _ = await stop_within(gw, 10.0)
    assert code == 0


async def test_status_counts_alerts_and_reload_is_announced(
    gateway_factory: GatewayFactory, notify_path: NotifySocket
) -> None:
    gw = gateway_factory()
    ws = await ws_connect(gw)
    await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact":false}')
    await recv_until(ws, alert_event("raised"))
    await ws.close()
    assert await asyncio.to_thread(gw.stop) == 0
    # Without WATCHDOG_USEC: READY=1 and STATUS= all the same, and no pings.
    start_notified(gw, notify_path)
    await notify_path.arrival("READY=1", 30.0)
    await notify_path.until(lambda: "1 active alert" in notify_path.status(), 15.0, "the open alert")
    assert gw.proc is not None
    reload_sent = time.monotonic()
    gw.proc.send_signal(signal.SIGHUP)
    await notify_path.arrival("READY=1", 10.0, since=reload_sent)
    after = notify_path.lines(since=reload_sent)
    assert after.index("RELOADING=1") < after.index("READY=1")
    assert any(line.startswith("MONOTONIC_USEC=") for line in after)
    assert "config reloaded" in gw.log
    assert not notify_path.pings()
    code, _ = await stop_within(gw, 10.0)
    assert code == 0


async def test_ready_waits_for_telegram(gateway_factory: GatewayFactory, notify_path: NotifySocket) -> None:
    token = "123456:TEST-token-for-the-notify-tests_0123"
    async with BotApiStandin(token=token) as api:
        extra = f'\n[telegram]\ntoken = "{token}"\napi_url = "{api.base_url}"\n'
        gw = gateway_factory(start=False, extra=extra)
        start_notified(gw, notify_path, WATCHDOG_USEC=str(WATCHDOG_USEC))
        await notify_path.arrival("READY=1", 45.0)
        # MQTT and the web were up (and said so) while aiogram loaded: READY=1 waited for the bot.
        assert "ready in" in gw.log and "polling as @" in gw.log
        before = notify_path.lines()[: notify_path.lines().index("READY=1")]
        assert any(line.startswith("STATUS=") and "telegram down (starting)" in line for line in before)
        assert "WATCHDOG=1" in before  # pings from the start: a stalled start-up is caught too
        assert "telegram up (polling)" in notify_path.status()
        code, _ = await stop_within(gw, 10.0)
        assert code == 0
