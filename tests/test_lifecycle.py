"""The lifecycle every server shares: `Backoff`, the instance `Supervisor`, `Servers`, and `Gateway`
running a server it was given like its own."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from protocols.backoff import Backoff
from protocols.instances import Instance, Supervisor
from protocols.lifecycle import Servers
from tests.conftest import ROOT, GatewayFactory, GatewayProcess, until

# Back-off


def test_backoff_doubles_up_to_its_limit_and_starts_over_after_a_success() -> None:
    backoff = Backoff(0.5, 4.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.failures == 6
    backoff.reset()
    assert backoff.next() == 0.5
    backoff.exhaust()  # what only a person can mend: the longest wait at once, until it works
    assert [backoff.next() for _ in range(2)] == [4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 0.5
    assert backoff.delay(100_000) == 4.0  # however long it has been failing


def test_backoff_jitter_spreads_each_wait_either_way() -> None:
    backoff = Backoff(1.0, 8.0, jitter=0.2)
    for base in (1.0, 2.0, 4.0, 8.0, 8.0):
        assert base * 0.8 <= backoff.next() <= base * 1.2
    waits = {Backoff(1.0, 8.0, jitter=0.2).next() for _ in range(50)}
    assert len(waits) > 1  # clients that failed together do not come back together


# The instance supervisor


class Chat(Instance):
    def __init__(self, scope: dict[str, Any]) -> None:
        super().__init__(scope=scope)
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.ended = asyncio.Event()


async def test_a_failing_instance_starts_again_with_its_queue_and_its_failure_is_logged_with_its_scope(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled: list[tuple[str, str]] = []
    scopes: list[dict[str, Any]] = []

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        while True:
            event = await receive()
            if event["text"] == "boom":
                raise RuntimeError("boom")
            if event["text"] == "bye":
                return
            await send({"reply": event["text"]})

    async def sent(inst: Chat, event: dict[str, Any]) -> None:
        handled.append((inst.scope["chat"], event["reply"]))

    delays: list[int] = []

    def failed(inst: Chat, exc: BaseException) -> float | None:
        delays.append(inst.failures)
        return 0.01 * inst.failures

    supervisor: Supervisor[Chat] = Supervisor(
        application,
        receive=lambda inst: inst.queue.get,
        send=lambda inst: lambda event: sent(inst, event),
        failed=failed,
        ended=lambda inst: inst.ended.set(),
        describe=lambda inst: f"chat {inst.scope['chat']}",
        log=logging.getLogger("gateway.test"),
    )
    chat = Chat({"chat": "a"})
    for text in ("one", "boom", "two", "boom", "three", "bye"):
        chat.queue.put_nowait({"text": text})
    supervisor.start(chat)
    await asyncio.wait_for(chat.ended.wait(), 5)
    # Each failure cost only the event it failed on; what was queued behind it came in order.
    assert handled == [("a", "one"), ("a", "two"), ("a", "three")]
    assert delays == [1, 2] and chat.failures == 2
    assert len(scopes) == 3 and all(s == {"chat": "a"} and s is not chat.scope for s in scopes)
    failures = [r for r in caplog.records if r.name == "gateway.test"]
    assert [r.getMessage() for r in failures] == [
        "application for chat a failed (1 in a row): RuntimeError('boom')",
    ]  # the second within the interval is held back, and counted in the next line logged
    assert failures[0].exc_info is not None
    await supervisor.close(1.0)


async def test_closing_the_supervisor_ends_what_runs_and_starts_nothing_again() -> None:
    started: list[str] = []

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started.append(scope["chat"])
        event = await receive()
        if event["text"] == "boom":
            raise RuntimeError("boom")
        await asyncio.Event().wait()  # holds on, as a stuck consumer would

    supervisor: Supervisor[Chat] = Supervisor(
        application,
        receive=lambda inst: inst.queue.get,
        send=lambda inst: inst.queue.put,
        failed=lambda inst, exc: 0.2,
        describe=lambda inst: "chat",
        log=logging.getLogger("gateway.test"),
    )
    stuck, failing = Chat({"chat": "stuck"}), Chat({"chat": "failing"})
    stuck.queue.put_nowait({"text": "hello"})
    failing.queue.put_nowait({"text": "boom"})
    supervisor.start(stuck)
    supervisor.start(failing)
    await until(lambda: failing.task is not None and failing.task.done(), what="the failure")
    loop = asyncio.get_running_loop()
    begun = loop.time()
    await supervisor.close(0.1)
    assert loop.time() - begun < 1.0
    assert stuck.task is not None and stuck.task.cancelled()
    await asyncio.sleep(0.3)  # when its restart would have come due
    assert started == ["stuck", "failing"]


# Servers


class Clock:
    """A minimal server: nothing to bind; ready once it has ticked; drains in `drain_for` seconds."""

    def __init__(
        self, name: str, events: list[str], drain_for: float = 0.0, fail_start: bool = False
    ) -> None:
        self.name, self.events, self.drain_for, self.fail_start = name, events, drain_for, fail_start
        self.ready = asyncio.Event()

    async def start(self) -> None:
        if self.fail_start:
            raise OSError(f"{self.name}: address in use")
        self.events.append(f"{self.name} started")

    async def serve(self, stop: asyncio.Event) -> None:
        self.ready.set()
        await stop.wait()
        self.events.append(f"{self.name} draining")
        await asyncio.sleep(self.drain_for)
        self.events.append(f"{self.name} drained")


async def test_servers_start_in_order_and_drain_together_within_the_time_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[str] = []
    servers = Servers([Clock("a", events), Clock("b", events, drain_for=0.1), Clock("slow", events, 60.0)])
    await servers.start()
    await asyncio.wait_for(servers.ready(), 1)
    assert events == ["a started", "b started", "slow started"]
    loop = asyncio.get_running_loop()
    begun = loop.time()
    await servers.drain(0.5)
    assert loop.time() - begun < 1.0
    assert set(events[3:]) == {"a draining", "b draining", "slow draining", "a drained", "b drained"}
    assert "slow: not drained within" in caplog.text


async def test_a_server_that_cannot_start_stops_the_start_and_the_others_drain() -> None:
    events: list[str] = []
    servers = Servers([Clock("a", events), Clock("web", events, fail_start=True), Clock("c", events)])
    with pytest.raises(OSError, match="web: address in use"):
        await servers.start()
    await servers.drain(1.0)
    assert events == ["a started", "a draining", "a drained"]


# Gateway

WITH_A_CLOCK = """
import asyncio, sys

from gateway import settings
from gateway.config import load_config
from gateway.ops import logs, ports
from gateway.server import Gateway, event_loop

config = load_config(sys.argv[1])
broker = ports.embedded_broker(config)
log = logs.server
# MQTT 3.1.1 CONNECT, clean session, client id "clock".
CONNECT = b"\\x10\\x11\\x00\\x04MQTT\\x04\\x02\\x00\\x3c\\x00\\x05clock"


class Clock:
    name = "clock"

    def __init__(self):
        self.ready = asyncio.Event()

    async def start(self):
        log.info("clock: started")

    async def serve(self, stop):
        await asyncio.sleep(0.5)
        log.info("clock: ready")
        self.ready.set()
        await stop.wait()
        log.info("clock: draining")
        reader, writer = await asyncio.open_connection(broker.local_host, broker.port)
        writer.write(CONNECT)
        if (await asyncio.wait_for(reader.readexactly(4), 2))[:2] == b"\\x20\\x02":  # CONNACK
            log.info("clock: the embedded broker still answers")
        writer.write(b"\\xe0\\x00")  # DISCONNECT
        writer.close()
        log.info("clock: drained")


class WithClock(Gateway):
    def protocol_servers(self, application, runtime):
        return [*super().protocol_servers(application, runtime), Clock()]


logs.setup("INFO")
loop = event_loop(["mqtt"])
settings.setup(config)
from gateway.asgi import load_extensions  # with Django set up, as gateway.cli does

load_extensions(config)
loop.run_until_complete(WithClock(config, ["mqtt"]).run())
"""


def _run_with_a_clock(gw: GatewayProcess) -> subprocess.Popen[bytes]:
    """`gw`'s config run by a `Gateway` that has one server more in its list: `Clock`, as above."""
    with open(gw.workdir / "gateway.log", "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", WITH_A_CLOCK, str(gw.config_path)],
            stdout=out,
            stderr=out,
            cwd=gw.workdir,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


async def test_gateway_starts_and_drains_a_server_added_to_its_list_like_its_own(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(start=False)
    proc = _run_with_a_clock(gw)
    try:
        await until(lambda: "ready in" in gw.log or proc.poll() is not None, what="ready")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = gw.log
    in_order = [
        "embedded MQTT broker listening",  # what the servers lean on, first
        "clock: started",
        "clock: ready",
        "ready in",  # waits for every server's `ready`, the clock's too
        "SIGTERM: draining",
        "clock: draining",
        "clock: the embedded broker still answers",  # drained last, after the servers
        "clock: drained",
        "stopped in",
    ]
    assert [log.find(line) for line in in_order] == sorted(log.find(line) for line in in_order), log
    assert -1 not in [log.find(line) for line in in_order], log
