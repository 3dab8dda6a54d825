"""WebSocket load: clients spread over worker processes, so that the load generator is not the bottleneck.

`ClientPool(workers)` starts the worker processes once (spawn); each holds its share of the
connections on its own asyncio loop. A connection records `(time.time(), text)` for every alert
event and nothing else on the receive path; the text is parsed for its `seq` only when the
results are asked for, after the measurement. Clock: `time.time()` is one clock on one machine,
so a receive time in a worker minus a publish time in the coordinator is a latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

ALERT = '"type":"alert"'
CONNECT_CONCURRENCY = 20


@dataclass
class _Client:
    ws: ClientConnection
    hello_seq: int
    events: list[tuple[float, str]] = field(default_factory=list)
    other: int = 0
    task: asyncio.Task[None] | None = None


async def _open(url: str, tries: int = 5) -> _Client:
    delay = 0.1
    for attempt in range(tries):
        try:
            # No compression: the floor and the gateway then both send plain frames.
            ws = await connect(
                url, compression=None, ping_interval=None, open_timeout=20, max_queue=None, max_size=None
            )
            hello = json.loads(await asyncio.wait_for(ws.recv(), 20))
            if hello.get("type") != "hello":
                raise RuntimeError(f"expected hello, got {str(hello)[:200]}")
            return _Client(ws, int(hello.get("seq", 0)))
        except (OSError, TimeoutError) as err:
            if attempt == tries - 1:
                raise RuntimeError(f"cannot connect to {url}: {err!r}") from err
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


async def _reader(client: _Client) -> None:
    events, clock = client.events, time.time
    with contextlib.suppress(Exception):
        async for text in client.ws:
            if ALERT in text:  # type: ignore[operator]
                events.append((clock(), text))  # type: ignore[arg-type]
            else:
                client.other += 1


def _seq(text: str) -> int:
    return int(json.loads(text)["seq"])


async def _wait(
    clients: list[_Client], lo: int | None, hi: int | None, idle: float, cap: float
) -> list[list[tuple[int, float]]]:
    """Per connection, the alert events with lo <= seq <= hi (all when lo is None) as (seq, receive time).

    Returns once every connection has all of them, or when none arrived for `idle` seconds (what
    is missing then is lost), or after `cap` seconds. Parsing happens here, between polls, not on
    the receive path.
    """
    expected = None if lo is None or hi is None else hi - lo + 1
    found: list[dict[int, float]] = [{} for _ in clients]
    parsed = [0] * len(clients)
    started = last = time.monotonic()
    while True:
        moved = False
        for i, client in enumerate(clients):
            events = client.events
            for t, text in events[parsed[i] :]:
                seq = _seq(text)
                if (lo is None or lo <= seq) and (hi is None or seq <= hi) and seq not in found[i]:
                    found[i][seq] = t
                    moved = True
            parsed[i] = len(events)
        now = time.monotonic()
        if moved:
            last = now
        if expected is not None and all(len(f) >= expected for f in found):
            break
        if now - last > idle or now - started > cap:
            break
        await asyncio.sleep(0.02)
    return [sorted(f.items()) for f in found]


async def _serve(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
    clients: list[_Client] = []
    while True:
        command, *args = await inbox.get()
        try:
            if command == "connect":
                url, n = args
                gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

                async def one(url: str = url, gate: asyncio.Semaphore = gate) -> _Client:
                    async with gate:
                        return await _open(url)

                started = time.monotonic()
                new = await asyncio.gather(*(one() for _ in range(n)))
                for client in new:
                    client.task = asyncio.ensure_future(_reader(client))
                clients.extend(new)
                conn.send(("ok", {"hello_seqs": [c.hello_seq for c in new], "s": time.monotonic() - started}))
            elif command == "wait":
                lo, hi, idle, cap = args
                conn.send(("ok", await _wait(clients, lo, hi, idle, cap)))
            elif command == "close":
                await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
                for client in clients:
                    if client.task is not None:
                        client.task.cancel()
                clients.clear()
                conn.send(("ok", None))
            elif command == "exit":
                loop.remove_reader(conn.fileno())
                conn.send(("ok", None))
                return
            else:
                conn.send(("error", f"unknown command {command!r}"))
        except Exception as err:
            conn.send(("error", f"{type(err).__name__}: {err}"))


def worker(conn: Connection) -> None:
    asyncio.run(_serve(conn))


class ClientPool:
    """`workers` processes; connections are dealt round-robin so that each holds about the same share."""

    def __init__(self, workers: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for i in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(child,), name=f"bench-ws-{i}", daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)
        self.sizes = [0] * workers

    def _ask(self, pipes: list[Connection], *command: Any, timeout: float = 120.0) -> list[Any]:
        for pipe in pipes:
            pipe.send(command)
        answers = []
        for pipe in pipes:
            if not pipe.poll(timeout):
                raise TimeoutError(f"a WebSocket worker did not answer {command[0]!r} in {timeout}s")
            status, value = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"WebSocket worker: {value}")
            answers.append(value)
        return answers

    async def connect(self, url: str, n: int) -> tuple[int, float]:
        """Open `n` connections, each until its hello; returns the lowest hello seq and the seconds taken."""
        shares = [
            n // len(self.pipes) + (1 if i < n % len(self.pipes) else 0) for i in range(len(self.pipes))
        ]
        started = time.monotonic()
        pipes = [p for p, share in zip(self.pipes, shares, strict=True) if share]
        for pipe, share in zip(self.pipes, shares, strict=True):
            if share:
                pipe.send(("connect", url, share))
        answers = await asyncio.to_thread(self._collect, pipes, 180.0)
        for i, share in enumerate(shares):
            self.sizes[i] += share
        seqs = [s for a in answers for s in a["hello_seqs"]]
        return min(seqs), time.monotonic() - started

    def _collect(self, pipes: list[Connection], timeout: float) -> list[Any]:
        answers = []
        for pipe in pipes:
            if not pipe.poll(timeout):
                raise TimeoutError(f"a WebSocket worker did not answer in {timeout}s")
            status, value = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"WebSocket worker: {value}")
            answers.append(value)
        return answers

    def _active(self) -> list[Connection]:
        return [p for p, size in zip(self.pipes, self.sizes, strict=True) if size]

    async def wait(
        self, lo: int | None, hi: int | None, idle: float = 5.0, cap: float = 90.0
    ) -> list[list[tuple[int, float]]]:
        """Per connection, its alert events with lo <= seq <= hi as (seq, receive time): see `_wait`."""
        answers = await asyncio.to_thread(
            self._ask, self._active(), "wait", lo, hi, idle, cap, timeout=cap + 60
        )
        return [events for answer in answers for events in answer]

    async def close(self) -> None:
        await asyncio.to_thread(self._ask, self._active(), "close")
        self.sizes = [0] * len(self.pipes)

    def shutdown(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.send(("exit",))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
