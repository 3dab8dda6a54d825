"""The one `ProtocolTypeRouter`: `http` (Django), `websocket`, `mqtt` and `telegram` (with a bot token)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable
from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application
from django.urls import path, re_path

from consumers.dashboard import AlertSocket, NotFoundSocket
from consumers.sensor import SensorConsumer
from consumers.site import SiteConsumer, ack_topic
from gateway.runtime import Runtime
from gateway.web.security import refusal, refuse
from protocols.mqtt.routing import TopicRouter, route


class WithRuntime:
    """Puts the process's `Runtime` into every scope as `scope["gateway"]`, and turns away a
    browser's request for a foreign Host or from a foreign Origin (`gateway.web.security.refusal`).

    In place, and not a coroutine of its own over a copy: what a scope's application holds
    lives as long as its socket (an idle dashboard held one more scope and one more frame,
    about 0.9 KiB). Every scope is its connection's own (daphne, the MQTT and the Telegram
    servers make one per instance).
    """

    _asgi_single_callable = True  # asgiref: an ASGI 3 application, though __call__ is not async

    def __init__(self, application: Any, runtime: Runtime) -> None:
        self.application = application
        self.runtime = runtime

    def __call__(self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable) -> Awaitable[None]:
        scope["gateway"] = self.runtime
        if scope["type"] in ("http", "websocket"):
            # Here, before Django: the WebSocket needs it as much, and a reload changes it.
            config = self.runtime.config
            reason = refusal(scope, config)
            if reason is not None:
                return refuse(reason, scope, receive, send, config)
        return self.application(scope, receive, send)  # type: ignore[no-any-return]


def build_application(runtime: Runtime) -> WithRuntime:
    site = runtime.config.gateway.site
    routes: dict[str, Any] = {
        "http": get_asgi_application(),
        "websocket": URLRouter(
            [
                path("ws/alerts/", AlertSocket.as_asgi()),
                re_path(r"", NotFoundSocket.as_asgi()),
            ]
        ),
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
    return WithRuntime(ProtocolTypeRouter(routes), runtime)
