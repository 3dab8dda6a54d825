"""Topic filters: validation, matching, and `TopicRouter`, the `URLRouter` of MQTT scopes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable

__all__ = ["TopicRouter", "route", "topic_matches", "validate_filter", "validate_topic"]


def validate_topic(topic: Any) -> str:
    """A topic to publish to: text, not empty, no wildcards."""
    if not isinstance(topic, str):
        raise TypeError(f"topic must be a str, got {type(topic).__name__}")
    if not topic:
        raise ValueError("topic must not be empty")
    if "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"topic {topic!r} may not contain wildcards or NUL")
    if len(topic.encode("utf-8")) > 65535:
        raise ValueError("topic is longer than 65535 bytes")
    return topic


def validate_filter(topic_filter: Any) -> str:
    """A subscription filter: `+` fills a whole level, `#` only as the last level."""
    if not isinstance(topic_filter, str):
        raise TypeError(f"topic filter must be a str, got {type(topic_filter).__name__}")
    if not topic_filter:
        raise ValueError("topic filter must not be empty")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and (level != "#" or i != len(levels) - 1)):
            raise ValueError(f"topic filter {topic_filter!r} misuses a wildcard in level {level!r}")
    return topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching; `$`-topics are not matched by a leading wildcard."""
    if topic_filter == topic:
        return True
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    flevels = topic_filter.split("/")
    tlevels = topic.split("/")
    for i, f in enumerate(flevels):
        if f == "#":
            return True
        if i >= len(tlevels) or (f != "+" and f != tlevels[i]):
            return False
    return len(flevels) == len(tlevels)


class route:  # noqa: N801 - reads like channels' path()/re_path()
    def __init__(self, topic_filter: str, application: Any) -> None:
        self.filter = validate_filter(topic_filter)
        self.application = application


class TopicRouter:
    """Routes an `mqtt` scope to the first route whose filter matches `scope["topic"]`."""

    def __init__(self, routes: Iterable[route]) -> None:
        self.routes = list(routes)

    async def __call__(self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "mqtt":
            raise ValueError(f"TopicRouter got a {scope['type']!r} scope")
        for r in self.routes:
            if topic_matches(r.filter, scope["topic"]):
                return await r.application(scope, receive, send)
        raise ValueError(f"No route found for MQTT topic {scope['topic']!r}")
