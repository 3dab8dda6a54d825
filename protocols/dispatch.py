"""`DirectDispatch`: Channels' dispatch without a database hop before every event.

Channels runs `close_old_connections` in a worker thread before each handler,
for request-style ORM use. These consumers reach the database only through
`sync_to_async`/`database_sync_to_async` calls that manage their own connection,
so the hop (a thread round trip per event per consumer: a second of CPU for one
alert to 1,000 dashboards) buys nothing here.
"""

from __future__ import annotations

from typing import Any

from channels.consumer import get_handler_name

__all__ = ["DirectDispatch"]


# message type -> handler name ("mqtt.message" -> "mqtt_message"): a handful of types, every event.
_names: dict[str, str] = {}


class DirectDispatch:
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
