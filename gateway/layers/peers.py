"""`PeerMirror`: what this process's sensors received, told to the other MQTT processes, in batches.

With an MQTT 5 shared subscription the broker hands each reading to one of the
processes of the group; each process must still keep every sensor's rule state
(open alerts, `for` holds, silence), so each tells the others what it received.
One channel-layer message per reading cost more than the reading itself (two
processes ingested less than one); here the readings of a process leave in one
`sensor.observed.batch` message per turn: while one batch is on its way, the next
gathers, so a busy process sends bigger batches, not more of them, and a quiet one
sends each reading at once. Batches leave one at a time, so peers get them in order.

A peer's readings are handed to the local sensor consumers synchronously, without
a task or a JSON parse each (`SensorConsumer.peer_observed`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from channels.exceptions import ChannelFull

from gateway.ops import logs, metrics
from protocols.backoff import Backoff

__all__ = ["GROUP", "PeerMirror", "Reading"]

# Every MQTT process of a shared subscription joins it.
GROUP = "sensor.peers"
# How long the list of the other members is used before it is read again (a process that starts
# hears from the others within this).
PEERS_TTL = 1.0

# (sensor id, wall-clock time received, "value" or "available", the value, retained)
Reading = tuple[str, float, str, Any, bool]

log = logs.sensors
_send_log = logs.RateLimit(interval=10.0)


class PeerMirror:
    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.channel: str | None = None
        # sensor id -> the local consumer's handler of a peer's reading
        self.handlers: dict[str, Callable[[float, str, Any, bool], None]] = {}
        self._pending: list[list[Any]] = []
        self._sender: asyncio.Task[None] | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._joined = asyncio.Event()
        self._peer_list: list[str] | None = None
        self._peers_at = 0.0

    async def start(self, timeout: float = 5.0) -> None:
        """Join the group (waiting up to `timeout` for the layer), then hear the peers in the background."""
        self._receiver = asyncio.ensure_future(self._receive())
        try:
            await asyncio.wait_for(asyncio.shield(self._joined.wait()), timeout)
        except TimeoutError:
            log.warning("shared subscription: not yet in the peers' group; still trying")

    async def stop(self) -> None:
        """After the MQTT server stopped: what is still to tell the peers goes (2 s at most), then leave."""
        if self._sender is not None and not self._sender.done():
            await asyncio.wait([self._sender], timeout=2.0)
        for task in (self._sender, self._receiver):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if self.channel is not None:
            try:
                await self.layer.group_discard(GROUP, self.channel)
            except Exception as err:
                log.debug("leaving the peers' group: %s", err)

    # Ours, to the peers

    def observe(self, sensor_id: str, at: float, kind: str, value: Any, retain: bool = False) -> None:
        """A reading this process received: it goes in the next batch."""
        self._pending.append([sensor_id, at, kind, value, retain])
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send())

    async def _peers(self) -> list[str] | None:
        """The other members of the group, looked up once a second; None: send to the group."""
        if not hasattr(self.layer, "group_members") or self.channel is None:
            return None
        now = asyncio.get_running_loop().time()
        if self._peer_list is None or now - self._peers_at >= PEERS_TTL:
            members = await self.layer.group_members(GROUP)
            if members is None:  # the layer cannot list them (its library's fence fell back)
                return None
            self._peer_list, self._peers_at = [m for m in members if m != self.channel], now
        return self._peer_list

    async def _send(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            message = {"type": "sensor.observed.batch", "origin": self.channel or "", "readings": batch}
            try:
                # Not to ourselves: the group's copy for us cost a write, a pop and a decode each.
                peers = await self._peers()
                if peers is None:
                    await self.layer.group_send(GROUP, message)
                for peer in peers or ():
                    with contextlib.suppress(ChannelFull):  # a peer gone or stuck: counted by the layer
                        await self.layer.send(peer, message)
            except Exception as err:  # the layer is away: these readings are lost to the peers
                metrics.deliveries.labels("layer", "failed").inc()
                allowed, held = _send_log.allow("peers")
                if allowed:
                    log.error(
                        "shared subscription: %d reading(s) not told to the peers: %s (%d more not logged)",
                        len(batch),
                        err,
                        held,
                    )

    # Theirs, to our consumers

    async def _receive(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                if self.channel is None:
                    channel = await self.layer.new_channel()
                    await self.layer.group_add(GROUP, channel)  # renewed by the layer (gateway.layers.memory)
                    self.channel = channel
                    self._joined.set()
                message = await self.layer.receive(self.channel)
            except Exception as err:  # the layer's receive retries outages itself; anything else: later
                delay = backoff.next()
                log.warning("shared subscription: peers' group (%s); retrying in %.1fs", err, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if message.get("origin") != self.channel and message.get("type") == "sensor.observed.batch":
                self.deliver(message.get("readings") or ())

    def deliver(self, readings: Any) -> None:
        for reading in readings:
            try:
                sensor_id, at, kind, value, retain = reading
                handler = self.handlers.get(sensor_id)
                if handler is not None:
                    handler(float(at), kind, value, bool(retain))
            except Exception:
                log.exception("shared subscription: a peer's reading %r failed here", reading)
