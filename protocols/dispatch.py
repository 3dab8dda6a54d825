"""`DirectDispatch`: Channels' dispatch without a database hop before every event, and its
`as_asgi` without a coroutine of its own.

Channels runs `close_old_connections` in a worker thread before each handler,
for request-style ORM use. These consumers reach the database only through
`sync_to_async`/`database_sync_to_async` calls that manage their own connection,
so the hop (a thread round trip per event per consumer: a second of CPU for one
alert to 1,000 dashboards) buys nothing here.

Channels' `as_asgi` application is a coroutine that makes the consumer and awaits it: one more
frame for every instance's lifetime (an idle dashboard's, a sensor's). Here it returns the
consumer's own coroutine instead.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import get_handler_name

__all__ = ["DirectDispatch"]


# message type -> handler name ("mqtt.message" -> "mqtt_message"): a handful of types, every event.
_names: dict[str, str] = {}


class DirectDispatch:
    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> Callable[[Any, Any, Any], Awaitable[None]]:
        """An ASGI 3 application that makes a consumer per scope (as channels' `as_asgi`)."""

        def app(scope: Any, receive: Any, send: Any) -> Awaitable[None]:
            return cls(**initkwargs)(scope, receive, send)  # type: ignore[call-arg, no-any-return, operator]

        app.consumer_class = cls  # type: ignore[attr-defined]
        app.consumer_initkwargs = initkwargs  # type: ignore[attr-defined]
        app._asgi_single_callable = True  # type: ignore[attr-defined] # asgiref: not an ASGI 2 one
        functools.update_wrapper(app, cls, updated=())
        return app

    async def dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        name = _names.get(kind) if isinstance(kind, str) else None
        if name is None:
            name = get_handler_name(message)  # validates, and raises for a bad type
            if len(_names) < 1000:
                _names[kind] = name  # type: ignore[index]
        handler = getattr(self, name, None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)
