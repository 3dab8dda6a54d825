"""Types of the gateway's extension to the `websocket` ASGI sub-spec, `gateway.frames`
(docs/specs/websocket.md). The standard scope and events are asgiref's (`asgiref.typing`)."""

from __future__ import annotations

from typing import Final, Protocol, TypedDict

__all__ = ["FRAMES", "FramesExtension", "PreparedFrame", "WebSocketExtensions"]

# The extension's name: its key in `scope["extensions"]`.
FRAMES: Final = "gateway.frames"


class PreparedFrame(Protocol):
    """A server-to-client text frame made by `FramesExtension.prepare`; opaque to applications."""


class FramesExtension(Protocol):
    """The object under `scope["extensions"]["gateway.frames"]`: the socket's own frame writer (one object
    per socket, no wrapper: a thousand idle dashboards should not pay for one)."""

    def prepare(self, text: str) -> PreparedFrame:
        """One text frame from `text`, built once for any number of sockets of the same server."""
        ...

    def send(self, frame: PreparedFrame) -> bool:
        """Writes it to this socket before returning; False if not written (not open, or too slow)."""
        ...

    async def drained(self, timeout: float) -> bool:
        """Waits until what was written went out to the kernel; False once the socket is closed. A
        client whose backlog does not go down within `timeout` seconds is dropped as too slow."""
        ...


# `scope["extensions"]` of a `websocket` scope; the functional form, as the name has a dot.
WebSocketExtensions = TypedDict("WebSocketExtensions", {"gateway.frames": FramesExtension}, total=False)
