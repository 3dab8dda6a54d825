"""The addresses a gateway process listens on: tried before it starts or connects anything, and
a failure to listen said in one line that names the config key."""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from gateway.config import Config, _host_port


class CannotListen(Exception):
    pass


@dataclass(frozen=True)
class Listener:
    key: str  # the config key that names the address
    host: str
    port: int
    advice: str

    @property
    def local_host(self) -> str:
        """Where a client on this machine reaches it: a wildcard address is reached on loopback."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    def cannot_listen(self, err: OSError) -> str:
        return f"{self.key} {self.host}:{self.port}: cannot listen: {reason(err)}. {self.advice}"

    async def start(self, start: Callable[[], Awaitable[None]]) -> None:
        """Await `start()`, its socket error raised as `CannotListen`."""
        try:
            await start()
        except OSError as err:
            raise CannotListen(self.cannot_listen(err)) from None


def web(config: Config) -> Listener:
    return Listener("http.bind", config.http.host, config.http.port, "Set http.bind to a free address.")


def embedded_broker(config: Config) -> Listener:
    host, port = _host_port(config.mqtt.embedded_bind, "embedded_bind")
    advice = "Set mqtt.embedded_bind to a free port, or point mqtt.url at the broker already there."
    return Listener("mqtt.embedded_bind", host, port, advice)


def unavailable(config: Config, protocols: Iterable[str]) -> list[str]:
    """One line for each address this process would listen on and cannot now."""
    listeners = []
    if "web" in protocols:
        listeners.append(web(config))
    if "mqtt" in protocols and config.mqtt.url == "embedded":
        listeners.append(embedded_broker(config))
    return [
        listener.cannot_listen(err)
        for listener in listeners
        if (err := bind_error(listener.host, listener.port)) is not None
    ]


def bind_error(host: str, port: int) -> OSError | None:
    """Why a listener on host:port would fail now, or None if it would not.

    Bound as daphne (Twisted) and amqtt (asyncio) bind, with SO_REUSEADDR: an address whose
    last connections wait out TIME_WAIT (a minute after a stop) is free to them, so here too.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as err:  # socket.gaierror too: a host name that does not resolve
        return err
    return None


def reason(err: OSError) -> str:
    if err.errno == errno.EADDRINUSE:
        return "the address is already in use"
    return (err.strerror or str(err)).rstrip(".")
