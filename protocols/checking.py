"""For test communicators: make an application's invalid sends raise, as they do on the servers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["checked"]


def checked(application: Any, validate: Callable[[Any], Any]) -> Any:
    """`application` with every event it sends passed through `validate` first."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def checked_send(event: Any) -> None:
            await send(validate(event))

        await application(scope, receive, checked_send)

    return app
