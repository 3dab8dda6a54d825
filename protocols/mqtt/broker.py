"""The embedded MQTT 3.1.1 broker (amqtt) for `mqtt.url = "embedded"`: nothing to install for a first run."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from gateway.ops import logs


class BrokerStartError(OSError):
    """The listening socket's error (the gateway says which config key it was)."""


class EmbeddedBroker:
    name = "broker"

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.ready = asyncio.Event()
        self._broker: Any = None

    async def start(self) -> None:
        from amqtt.broker import Broker
        from amqtt.errors import BrokerError

        class _Broker(Broker):  # type: ignore[misc]
            async def stream_connected(self, reader: Any, writer: Any, listener_name: str) -> None:
                # Small PUBLISH packets must not wait for Nagle's algorithm.
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await super().stream_connected(reader, writer, listener_name)

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            # Only what we need: no per-packet logger, no $SYS tree.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = _Broker(config, loop=asyncio.get_running_loop())
        quiet = logging.getLogger("amqtt.broker")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # its traceback for a taken port; we say it in one line
        try:
            await self._broker.start()
        except BrokerError as err:
            self._broker = None  # never started: nothing to shut down (amqtt would refuse, and say so)
            cause = err.__cause__
            raise BrokerStartError(*(cause.args if isinstance(cause, OSError) else (str(err),))) from None
        finally:
            quiet.setLevel(level)
        logs.broker.info("embedded MQTT broker listening on %s:%d", self.host, self.port)
        self.ready.set()

    async def serve(self, stop: asyncio.Event) -> None:
        """amqtt serves on the loop; at `stop` it shuts down, its clients disconnected."""
        await stop.wait()
        if self._broker is not None:
            try:
                await asyncio.wait_for(self._broker.shutdown(), 3.0)
            except Exception as err:  # shutting down anyway
                logs.broker.warning("embedded broker shutdown: %r", err)
