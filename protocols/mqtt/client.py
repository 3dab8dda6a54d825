"""paho-mqtt driven by the asyncio event loop: no thread, no poll interval.

paho does the protocol; the loop watches its socket (`add_reader`/`add_writer`)
and the TCP connect is awaited, so a broker that is down or slow never blocks
the loop. TCP_NODELAY is set on every connection: Nagle's algorithm would hold
small PUBLISH/PUBACK packets back by tens of milliseconds.

The ingest fast paths (a buffered read, a PUBLISH decoded without `Properties`, PUBACKs in
one write) use paho's internals: they are in protocols._paho, with paho's own path as fallback.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from protocols._paho import FastPahoClient

__all__ = ["AsyncioClient", "BrokerAddress"]


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        tls = parts.scheme in ("mqtts", "ssl")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def __str__(self) -> str:  # never the password
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class AsyncioClient(FastPahoClient):
    """A paho client whose socket I/O is driven by an asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, **kwargs)
        self._aloop = loop
        self._tls_set = False
        self._misc: asyncio.TimerHandle | None = None
        self._read_again: asyncio.Handle | None = None
        self.on_socket_open = self._io_open
        self.on_socket_close = self._io_close
        self.on_socket_register_write = self._io_want_write
        self.on_socket_unregister_write = self._io_done_write

    async def connect_async_io(
        self, address: BrokerAddress, keepalive: int, timeout: float, **kw: Any
    ) -> None:
        """Open the TCP connection without blocking, then let paho send CONNECT."""
        infos = await self._aloop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        last: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(self._aloop.sock_connect(sock, sockaddr), timeout)
            except (OSError, TimeoutError) as err:
                sock.close()
                last = err if isinstance(err, OSError) else OSError(f"timed out after {timeout:.0f}s")
                continue
            break
        else:
            raise last or OSError(f"cannot resolve {address.host}")
        if address.username is not None:
            self.username_pw_set(address.username, address.password)
        if address.tls and not self._tls_set:
            self.tls_set_context(ssl.create_default_context())
            self._tls_set = True
        self.connect_on(sock, address.host, address.port, keepalive, timeout, **kw)

    # Socket callbacks: paho tells us which events to watch.

    def _io_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # before paho sends CONNECT
        self.forget_received()
        self._aloop.add_reader(sock, self._read)
        self._schedule_misc()

    def _io_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._aloop.remove_reader(sock)
        self._aloop.remove_writer(sock)
        self.forget_received()
        if self._read_again is not None:
            self._read_again.cancel()
            self._read_again = None
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    def _io_want_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._aloop.add_writer(sock, self.loop_write)

    def _io_done_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._aloop.remove_writer(sock)

    def _read_more(self) -> None:
        self._read_again = None
        self._read()

    def _read(self) -> None:
        # More may wait where the socket being readable does not tell (our buffer, TLS's), or the
        # reader stopped to give the loop a turn: come back after the other callbacks, once. So a
        # turn has at most two reads (the socket's and this one); a second one pending made three
        # the next turn, and so on, and a long burst held the loop longer every turn.
        if self.read_packets() and self._read_again is None:
            self._read_again = self._aloop.call_soon(self._read_more)

    def _schedule_misc(self) -> None:
        self._misc = self._aloop.call_later(1.0, self._run_misc)

    def _run_misc(self) -> None:
        # Keepalive pings and the detection of a silent broker.
        if self.loop_misc() == paho.MQTT_ERR_SUCCESS:
            self._schedule_misc()
