"""WebSocket load: clients spread over worker processes, so that the load generator is not the bottleneck.

`ClientPool(workers)` starts the worker processes once (spawn); each holds its share of the
connections on its own asyncio loop. A connection records `(time.time(), payload)` for every alert
event and nothing else on the receive path (see `_Reader`); the payload is parsed for its `seq` only when the
results are asked for, after the measurement. Clock: `time.time()` is one clock on one machine,
so a receive time in a worker minus a publish time in the coordinator is a latency.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

ALERT = b'"type":"alert"'
CONNECT_CONCURRENCY = 20


class _Reader(asyncio.Protocol):
    """A WebSocket client that reads and does nothing else (RFC 6455, no extensions).

    The `websockets` library costs a client process tens of microseconds per message
    (frame parsing, a queue, a task wake-up): with 1,000 connections on two cores the
    load generator, not the server, set the fan-out percentiles. Here one
    `data_received` takes a timestamp and slices the frames out of the bytes; a text
    frame that is an alert event is kept as `(arrival time, payload)`, parsed later.
    Pings are answered (daphne pings every 20 s), a close is answered and ends it.
    """

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.upgraded = False
        self.hello: asyncio.Future[bytes] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.events: list[tuple[float, bytes]] = []
        self.other = 0
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._parts: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.hello.done():
            self.hello.set_exception(ConnectionError(f"closed before hello: {exc!r}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self._buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if b" 101 " not in status:
                refused = status.decode(errors="replace")
                self.hello.set_exception(ConnectionError(f"handshake refused: {refused}"))
                self.close_now()
                return
            self.upgraded = True
            del buf[: end + 4]
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            size, offset = b1 & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    return
                size, offset = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size, offset = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < offset + size:
                return
            payload = bytes(buf[offset : offset + size])
            del buf[: offset + size]
            opcode = b0 & 0x0F
            if opcode in (0, 1, 2):
                self._parts.append(payload)
                if b0 & 0x80:  # FIN: the message is whole
                    message = b"".join(self._parts) if len(self._parts) > 1 else payload
                    self._parts.clear()
                    self._message(now, message)
            elif opcode == 9:
                self._send(0xA, payload)
            elif opcode == 8:
                self._send(0x8, payload[:2])
                self.close_now()
                return

    def _message(self, now: float, message: bytes) -> None:
        if not self.hello.done():
            self.hello.set_result(message)
        elif ALERT in message:
            self.events.append((now, message))
        else:
            self.other += 1

    def _send(self, opcode: int, payload: bytes) -> None:
        # A client masks what it sends; control frames carry at most 125 bytes.
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked)

    def close_now(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def close(self) -> None:
        self._send(0x8, (1000).to_bytes(2, "big"))
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), 5)
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()


@dataclass
class _Client:
    ws: _Reader
    hello_seq: int

    @property
    def events(self) -> list[tuple[float, bytes]]:
        return self.ws.events


async def _handshake(url: str) -> _Reader:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    _, reader = await loop.create_connection(_Reader, host, port)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert reader.transport is not None
    reader.transport.write(request.encode())
    return reader


async def _open(url: str, tries: int = 5) -> _Client:
    delay = 0.1
    for attempt in range(tries):
        try:
            ws = await asyncio.wait_for(_handshake(url), 20)
            hello = json.loads(await asyncio.wait_for(ws.hello, 20))
            if hello.get("type") != "hello":
                raise RuntimeError(f"expected hello, got {str(hello)[:200]}")
            return _Client(ws, int(hello.get("seq", 0)))
        except (OSError, TimeoutError) as err:
            if attempt == tries - 1:
                raise RuntimeError(f"cannot connect to {url}: {err!r}") from err
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _seq(text: bytes) -> int:
    return int(json.loads(text)["seq"])


async def _wait(
    clients: list[_Client], lo: int | None, hi: int | None, idle: float, cap: float
) -> list[list[tuple[int, float]]]:
    """Per connection, the alert events with lo <= seq <= hi (all when lo is None) as (seq, receive time).

    Returns once every connection has all of them, or when none arrived for `idle` seconds (what
    is missing then is lost), or after `cap` seconds. While events are still coming, only their
    number is watched: parsing 20,000 of them takes this process's loop for tens of milliseconds,
    and an event arriving meanwhile would be stamped late.
    """
    expected = None if lo is None or hi is None else hi - lo + 1
    started = last = time.monotonic()
    count = -1
    while True:
        now = time.monotonic()
        total = sum(len(c.events) for c in clients)
        if total != count:
            count, last = total, now
        over = now - last > idle or now - started > cap
        if over or (expected is not None and all(len(c.events) >= expected for c in clients)):
            found = [_select(c.events, lo, hi) for c in clients]
            if over or all(len(f) >= expected for f in found):  # type: ignore[operator]
                return [sorted(f.items()) for f in found]
        await asyncio.sleep(0.02)


def _select(events: list[tuple[float, bytes]], lo: int | None, hi: int | None) -> dict[int, float]:
    found: dict[int, float] = {}
    for t, text in events:
        seq = _seq(text)
        if (lo is None or lo <= seq) and (hi is None or seq <= hi) and seq not in found:
            found[seq] = t
    return found


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
                clients.extend(new)
                conn.send(("ok", {"hello_seqs": [c.hello_seq for c in new], "s": time.monotonic() - started}))
            elif command == "wait":
                lo, hi, idle, cap = args
                conn.send(("ok", await _wait(clients, lo, hi, idle, cap)))
            elif command == "close":
                await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
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
        return self._collect(pipes, timeout, command[0])

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

    def _collect(self, pipes: list[Connection], timeout: float, what: str = "connect") -> list[Any]:
        answers = []
        for pipe in pipes:
            if not pipe.poll(timeout):
                raise TimeoutError(f"a WebSocket worker did not answer {what!r} in {timeout}s")
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
