"""autobahn's private names, in one place: prepared frames written past it (checked on autobahn 26.11.1).

`frame` gives a prepared message's bytes (`PreparedMessage.payloadHybi`) when a protocol may
take them as they are: no compression negotiated (`_perMessageCompress`), nothing waiting in
autobahn's queue (`send_queue`). The WebSocket server then writes them to the transport itself.

autobahn is imported on first use, not here (it imports Twisted, whose reactor must be
daphne's), so `FAST` (whether this autobahn has every name in `INTERNALS`) is decided once, on
first use (the web server's start). Without them every frame goes through autobahn's
`sendPreparedMessage` (slower: a deferred write each); start-up logs it once.

`lean` imports autobahn without what only WAMP (the other protocol autobahn speaks) and its
command line use: 9 MiB of RSS that a WebSocket server never needs (see `lean`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gateway.ops import logs
from gateway.ops.process import hidden, package_on_use

CHECKED = {"autobahn": "26.11.1"}
INTERNALS = (
    "PreparedMessage.payloadHybi",
    "WebSocketProtocol._perMessageCompress",
    "WebSocketProtocol.send_queue",
)

FAST: bool | None = None  # None: not decided yet (see `enabled`)


def check() -> bool:
    """Whether this autobahn has every name in `INTERNALS`; logs what is missing when not."""
    from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol

    # Instance attributes, named where they are set: the constructor, or the connection's start.
    named = {
        "PreparedMessage": _names(PreparedMessage.__init__),
        "WebSocketProtocol": _names(getattr(WebSocketProtocol, "_connectionMade", None)),
    }
    missing = [
        internal for internal in INTERNALS if internal.split(".")[1] not in named[internal.split(".")[0]]
    ]
    if missing:
        from importlib.metadata import version  # here: half a MiB the gateway does not import

        logs.web.warning(
            "autobahn %s lacks %s (checked on %s): WebSocket frames take autobahn's slower public path",
            version("autobahn"),
            ", ".join(missing),
            CHECKED["autobahn"],
        )
    return not missing


def _names(function: Any) -> tuple[str, ...]:
    code = getattr(function, "__code__", None)
    return code.co_names if code is not None else ()


def enabled() -> bool:
    """`FAST`, decided on the first call (autobahn may be imported by then)."""
    global FAST
    if FAST is None:
        FAST = check()
    return FAST


def frame(protocol: Any, prepared: Any) -> bytes | None:
    """The bytes of `prepared` if `protocol` may take them as they are; None: `sendPreparedMessage`."""
    if (FAST or enabled()) and protocol._perMessageCompress is None and not protocol.send_queue:
        return prepared.payloadHybi  # type: ignore[no-any-return]
    return None


# What autobahn imports when it can, for WAMP and its command line only: click (autobahn.util's
# colours), cbor2 (WAMP's FlatBuffers messages; WAMP imports it again where it uses it).
WAMP_ONLY = ("click", "cbor2")


@contextmanager
def lean() -> Iterator[None]:
    """For autobahn's first import, in here: the `__init__` of package `autobahn.twisted` runs when
    one of its names is first used, not when daphne imports `autobahn.twisted.websocket`, and
    `WAMP_ONLY` are not found (afterwards they are, for whoever else wants them).

    That `__init__` only re-exports, and imports `autobahn.twisted.wamp`, whose authentication
    imports cryptography (a 6 MiB Rust library) and argon2: 7 MiB of RSS. `WAMP_ONLY`: 1.8 MiB.
    """
    package_on_use("autobahn.twisted")
    with hidden(*WAMP_ONLY):
        yield
