"""Shared subscriptions: readings reach the peers in batches, in order, and not back to their sender."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.layers.memory import MemoryLayer
from gateway.layers.peers import PeerMirror
from gateway.layers.redis import RedisLayer
from tests.conftest import Service, until


class Counting(MemoryLayer):
    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        self.sent += 1
        await super().send(channel, message)


async def _pair(layer: Any) -> tuple[PeerMirror, PeerMirror, list[tuple[str, Any]], list[tuple[str, Any]]]:
    a, b = PeerMirror(layer), PeerMirror(layer)
    await a.start()
    await b.start()
    heard_a: list[tuple[str, Any]] = []
    heard_b: list[tuple[str, Any]] = []
    for sensor in ("t1", "t2"):
        a.handlers[sensor] = lambda at, kind, value, retain, s=sensor: heard_a.append((s, value))
        b.handlers[sensor] = lambda at, kind, value, retain, s=sensor: heard_b.append((s, value))
    return a, b, heard_a, heard_b


async def test_readings_reach_the_peer_in_order_and_in_few_messages() -> None:
    layer = Counting()
    a, b, heard_a, heard_b = await _pair(layer)
    try:
        for i in range(1000):
            a.observe("t1" if i % 2 else "t2", 1.0, "value", i)
            if i % 100 == 0:
                await asyncio.sleep(0)  # a few loop turns, as readings come in
        a.observe("unknown", 1.0, "value", 0)  # no consumer for it there: ignored
        await until(lambda: len(heard_b) == 1000, what="1000 readings at the peer")
        assert [v for _, v in heard_b] == list(range(1000))
        assert all(s == ("t1" if v % 2 else "t2") for s, v in heard_b)
        assert heard_a == []  # not told back to itself
        assert layer.sent <= 20, layer.sent  # batched: one message per turn, not per reading
    finally:
        await a.stop()
        await b.stop()


async def test_over_redis_both_ways(redis_server: Service) -> None:
    layer = RedisLayer(hosts=[f"redis://127.0.0.1:{redis_server.port}/0"])
    a, b, heard_a, heard_b = await _pair(layer)
    try:
        for i in range(300):
            (a if i % 3 else b).observe("t1", 1.0, "value", i)
        await until(lambda: len(heard_a) + len(heard_b) == 300, what="300 readings")
        assert [v for _, v in heard_b] == [i for i in range(300) if i % 3]
        assert [v for _, v in heard_a] == [i for i in range(300) if not i % 3]
    finally:
        await a.stop()
        await b.stop()
