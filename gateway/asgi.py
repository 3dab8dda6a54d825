"""The one application: `http` (Django), `websocket`, `mqtt` and `telegram` (with a bot token)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable
from django.core.asgi import get_asgi_application

from consumers.dashboard import AlertSocket, NotFoundSocket
from consumers.sensor import SensorConsumer
from consumers.site import SiteConsumer, ack_topic
from gateway.runtime import Runtime
from protocols.mqtt.routing import TopicRouter, route


class WithRuntime:
    """Hands every scope to the application of its type, with the process's `Runtime` in it as
    `scope["gateway"]`.

    In place, and not a coroutine of its own: what a scope's application holds lives as long as
    its socket, and an idle dashboard held two more copies of its scope and two more coroutine
    frames (this one and `ProtocolTypeRouter`'s), about 1.3 KiB each. Every scope is its
    connection's own (daphne, the MQTT and the Telegram servers make one per instance).
    """

    _asgi_single_callable = True  # asgiref: an ASGI 3 application, though __call__ is not async

    def __init__(self, routes: dict[str, Any], runtime: Runtime) -> None:
        self.routes = routes
        self.runtime = runtime

    def __call__(self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable) -> Awaitable[None]:
        try:
            application = self.routes[scope["type"]]
        except KeyError:
            raise ValueError(f"No application configured for scope type {scope['type']!r}") from None
        scope["gateway"] = self.runtime
        return application(scope, receive, send)


class SocketRoutes:
    """The WebSocket paths, matched exactly (as URLRouter matched `path()` routes); anything else
    goes to `default`. Each scope gets a new consumer, as `as_asgi()` gives it.

    URLRouter held a copy of the scope (with `url_route`, which no consumer reads) and two more
    coroutine frames for every open socket, about 1 KiB.
    """

    _asgi_single_callable = True

    def __init__(self, paths: dict[str, type[Any]], default: type[Any]) -> None:
        self.paths = paths
        self.default = default

    def __call__(self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable) -> Awaitable[None]:
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return self.paths.get(path, self.default)()(scope, receive, send)


def build_application(runtime: Runtime) -> WithRuntime:
    site = runtime.config.gateway.site
    routes: dict[str, Any] = {
        "http": get_asgi_application(),
        "websocket": SocketRoutes({"/ws/alerts/": AlertSocket}, NotFoundSocket),
        "mqtt": TopicRouter(
            [
                route(ack_topic(site), SiteConsumer.as_asgi()),
                route("#", SensorConsumer.as_asgi()),
            ]
        ),
    }
    if runtime.config.telegram_enabled:
        # One scope per chat; the server exists only when a bot token is set (a new token needs a
        # restart), and only then are the Telegram consumers imported.
        from consumers.telegram import ChatConsumer

        routes["telegram"] = ChatConsumer.as_asgi()
    return WithRuntime(routes, runtime)
