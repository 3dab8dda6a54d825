"""Twisted's private names, in one place: the shared loop and the frame write (checked on Twisted 26.10.0).

- `reactor_loop`: the asyncio loop under Twisted's reactor (`_asyncioEventloop`), which the
  whole gateway shares;
- `buffered`: what a TCP transport holds, not yet taken by the kernel (`dataBuffer`,
  `_tempDataLen`), to bound what waits for a slow WebSocket client;
- `write`: a frame straight to the kernel when nothing waits before it (`offset`,
  `_writeDisconnected`, `socket` of a TCP connection), as asyncio's own transports do.

Twisted is imported on first use, not here: this module is imported by processes that never
serve HTTP, and Twisted's reactor must be daphne's. So `FAST` (whether this Twisted has every
name in `INTERNALS`) is decided once, on first use: `reactor_loop` at start-up. Without them:
the reactor is installed on a loop of ours (Twisted's documented way), every frame goes
through Twisted's `write` (slower), and a client's backlog is not known, so a slow client is
only dropped when a paced writer's wait for it times out (less exact); start-up logs it once.
How Twisted's HTTP channel is subclassed (public names) is in protocols.websocket.twisted_io.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from gateway.ops import logs

CHECKED = {"twisted": "26.10.0"}
INTERNALS = (
    "AsyncioSelectorReactor._asyncioEventloop",
    "FileDescriptor.dataBuffer",
    "FileDescriptor.offset",
    "FileDescriptor._tempDataLen",
    "FileDescriptor._writeDisconnected",
    "Connection.socket",
)

FAST: bool | None = None  # None: not decided yet (see `enabled`)


def check() -> bool:
    """Whether this Twisted has every name in `INTERNALS`; logs what is missing when not."""
    from twisted.internet.abstract import FileDescriptor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor
    from twisted.internet.tcp import Connection

    owners = {cls.__name__: cls for cls in (AsyncioSelectorReactor, FileDescriptor, Connection)}
    missing = [internal for internal in INTERNALS if not _has(owners[internal.split(".")[0]], internal)]
    if missing:
        from importlib.metadata import version  # here: half a MiB the gateway does not import

        logs.web.warning(
            "Twisted %s lacks %s (checked on %s): WebSocket frames take Twisted's slower public path",
            version("twisted"),
            ", ".join(missing),
            CHECKED["twisted"],
        )
    return not missing


def _has(cls: Any, internal: str) -> bool:
    # An instance attribute is named by the constructor: looked for there, without an instance.
    name = internal.split(".")[1]
    constructor = getattr(cls.__init__, "__code__", None)
    return hasattr(cls, name) or (constructor is not None and name in constructor.co_names)


def enabled() -> bool:
    """`FAST`, decided on the first call (Twisted may be imported by then)."""
    global FAST
    if FAST is None:
        FAST = check()
    return FAST


def reactor_loop() -> asyncio.AbstractEventLoop:
    """Twisted's asyncio reactor, installed as daphne does, and the event loop it runs on."""
    if enabled():
        import daphne.server  # installs the reactor, on a loop of its own
        from twisted.internet import reactor

        return reactor._asyncioEventloop  # type: ignore[attr-defined,no-any-return]
    # Twisted's documented way: the reactor on a loop of ours, installed before daphne's import
    # (daphne keeps an asyncio reactor it finds).
    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncioreactor.install(loop)
    import daphne.server  # noqa: F401

    return loop


def buffered(transport: Any) -> int:
    """Bytes Twisted holds for a TCP transport, not yet taken by the kernel (0: not known)."""
    if FAST or enabled():
        # Not every transport is a TCP one (a test's, TLS's): those count what they have.
        return len(getattr(transport, "dataBuffer", b"")) + int(getattr(transport, "_tempDataLen", 0))
    return 0


@functools.cache
def _tcp_connection() -> Any:
    from twisted.internet.tcp import Connection

    return Connection


def write(transport: Any, data: bytes) -> None:
    """`data` to a Twisted transport: to the kernel now when nothing waits before it."""
    if (
        (FAST or enabled())
        and isinstance(transport, _tcp_connection())
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and len(transport.dataBuffer) == transport.offset
    ):
        try:
            sent = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # Twisted's write finds the error again and closes the connection
        data = data[sent:]
        if not data:
            return
    transport.write(data)
