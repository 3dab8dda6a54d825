"""The one `ProtocolTypeRouter`: `http` (Django), `websocket`, `mqtt`, `telegram` (with a bot token)
and `channel` (workers), the config's `[[consumers]]` and `[[workers]]` routed before the gateway's own."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable
from channels.routing import ChannelNameRouter, URLRouter
from django.core.asgi import get_asgi_application
from django.urls import Resolver404, path, re_path
from django.urls.resolvers import URLPattern

from consumers.dashboard import AlertSocket, NotFoundSocket
from consumers.discovery import DEVICE as DISCOVERY_DEVICE
from consumers.discovery import DiscoveryConsumer
from consumers.sensor import SensorConsumer
from consumers.site import SiteConsumer, ack_topic
from gateway.config import Config, ConfigError
from gateway.ops import logs
from gateway.runtime import Runtime
from gateway.web.security import refusal, refuse
from protocols.mqtt.routing import TopicRouter, route


class WithRuntime:
    """The application: puts the process's `Runtime` into every scope as `scope["gateway"]`, turns
    away a browser's request for a foreign Host or from a foreign Origin
    (`gateway.web.security.refusal`), and routes the scope by its type (channels'
    `ProtocolTypeRouter`).

    In place, and not a coroutine of its own over a copy: what a scope's application holds
    lives as long as its socket (an idle dashboard held one more scope and one more frame,
    about 0.9 KiB). Every scope is its connection's own (daphne, the MQTT and the Telegram
    servers make one per instance).
    """

    _asgi_single_callable = True  # asgiref: an ASGI 3 application, though __call__ is not async

    def __init__(self, routes: dict[str, Any], runtime: Runtime) -> None:
        self.routes = routes
        self.runtime = runtime

    def __call__(self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable) -> Awaitable[None]:
        scope["gateway"] = self.runtime
        if scope["type"] in ("http", "websocket"):
            # Here, before Django: the WebSocket needs it as much, and a reload changes it.
            config = self.runtime.config
            reason = refusal(scope, config)
            if reason is not None:
                return refuse(reason, scope, receive, send, config)
        try:
            application = self.routes.get(scope["type"])
            if application is None:
                raise ValueError(f"No application configured for scope type {scope['type']!r}")
            return application(scope, receive, send)  # type: ignore[no-any-return]
        except Exception as err:
            # No route, or a consumer that failed to be made: in its task, as from an async router,
            # so the server logs it with the connection and closes it (a WebSocket with 1011).
            return _failed(err)


async def _failed(err: Exception) -> None:
    raise err


class PathRouter(URLRouter):  # type: ignore[misc]
    """channels' `URLRouter` without a coroutine of its own: it hands the scope, in place, to the
    route's application and returns that application's coroutine, which its task runs alone.

    An idle dashboard's task held the router's frame and a second scope (URLRouter copies it to
    add `url_route`) for as long as its socket was open.
    """

    _asgi_single_callable = True

    def __call__(  # type: ignore[override]
        self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> Awaitable[None]:
        path = scope.get("path_remaining", scope.get("path"))
        if path is None:
            raise ValueError("No 'path' key in connection scope, cannot route URLs")
        if "path_remaining" not in scope:  # the outermost router: the root path is not routed
            root_path = scope.get("root_path", "")
            if root_path and not path.startswith(root_path):
                raise ValueError(f"No route found for path {path!r}.")
            path = path[len(root_path) :]
        path = path.lstrip("/")  # as Django's own resolver
        outer = scope.get("url_route", {})
        for pattern in self.routes:
            try:
                match = pattern.pattern.match(path)
                if match:
                    new_path, args, kwargs = match
                    scope["path_remaining"] = new_path
                    scope["url_route"] = {
                        "args": outer.get("args", ()) + args,
                        "kwargs": {**outer.get("kwargs", {}), **kwargs, **pattern.default_args},
                    }
                    return pattern.callback(scope, receive, send)  # type: ignore[no-any-return]
            except Resolver404:  # a router under this one had no route for the rest: the next route
                pass
        if "path_remaining" in scope:
            raise Resolver404(f"No route found for path {path!r}.")
        raise ValueError(f"No route found for path {path!r}.")


def build_application(runtime: Runtime) -> WithRuntime:
    config = runtime.config
    extensions = load_extensions(config)
    routes: dict[str, Any] = {
        "http": get_asgi_application(),
        "websocket": PathRouter(
            [
                *extensions.websocket,
                path("ws/alerts/", AlertSocket.as_asgi()),
                re_path(r"", NotFoundSocket.as_asgi()),
            ]
        ),
        "mqtt": DeviceRouter(
            {**extensions.mqtt_devices, DISCOVERY_DEVICE: DiscoveryConsumer.as_asgi()},
            TopicRouter(extensions.mqtt_filters),
            TopicRouter(
                [
                    route(ack_topic(config.gateway.site), SiteConsumer.as_asgi()),
                    route("#", SensorConsumer.as_asgi()),
                ]
            ),
        ),
    }
    if config.telegram_enabled:
        # One scope per chat; the server exists only when a bot token is set (a new token needs a
        # restart), and only then are the Telegram consumers imported.
        from consumers.telegram import ChatConsumer

        routes["telegram"] = extensions.telegram or ChatConsumer.as_asgi()
    elif extensions.telegram is not None:
        logs.server.warning("the telegram entry of [[consumers]] is not used: telegram.token is not set")
    if extensions.workers:
        routes["channel"] = ChannelNameRouter(extensions.workers)
    return WithRuntime(routes, runtime)


class DeviceRouter:
    """MQTT scopes by device: the config's consumers take the devices made for them, every other
    device goes to the gateway's own routes.

    An exact topic's device is named for its entry (`consumer_devices`); a wildcard's devices are
    the lazy ones (the server makes them for `consumer_filters` only). By device and not by
    topic: a sensor's device stays the sensor's, whatever filter of the config matches its topic.
    """

    def __init__(self, devices: dict[str, Any], filters: TopicRouter, own: TopicRouter) -> None:
        self.devices = devices
        self.filters = filters
        self.own = own

    async def __call__(self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        application = self.devices.get(scope["device"])
        if application is None:
            application = self.filters if scope.get("lazy") else self.own
        await application(scope, receive, send)


def consumer_devices(config: Config) -> dict[str, str]:
    """The MQTT devices of the config's consumers on exact topics: id -> topic, made at start-up."""
    return {
        f"consumers[{n}]": c.topic for n, c in enumerate(config.consumers) if c.protocol == "mqtt" and c.exact
    }


def consumer_filters(config: Config) -> tuple[str, ...]:
    """The config's wildcard filters: a topic matching one (and no other device) gets a device."""
    return tuple(c.topic for c in config.consumers if c.protocol == "mqtt" and not c.exact)


@dataclass(frozen=True)
class Extensions:
    """The config's `[[consumers]]` and `[[workers]]`, imported and ready to route."""

    mqtt_devices: dict[str, Any]  # device id (consumer_devices) -> application
    mqtt_filters: list[route]
    websocket: list[URLPattern]
    telegram: Any
    workers: dict[str, Any]  # channel -> application


def load_extensions(config: Config) -> Extensions:
    """Import every `app` of the config; a ConfigError names the key of the first that fails."""
    devices: dict[str, Any] = {}
    filters: list[route] = []
    websocket: list[URLPattern] = []
    telegram: Any = None
    for n, consumer in enumerate(config.consumers):
        key = f"consumers[{n}]"
        application = load_app(f"{key}.app", consumer.app)
        if consumer.protocol == "mqtt" and consumer.exact:
            devices[key] = application
        elif consumer.protocol == "mqtt":
            filters.append(route(consumer.topic, application))
        elif consumer.protocol == "websocket":
            try:
                websocket.append(path(consumer.path, application))
            except Exception as err:  # Django's own words on a bad route (an unknown converter)
                raise ConfigError(f"{key}.path: {err}") from None
        else:
            telegram = application
    workers = {w.channel: load_app(f"workers[{n}].app", w.app) for n, w in enumerate(config.workers)}
    return Extensions(devices, filters, websocket, telegram, workers)


def load_app(key: str, spec: str) -> Any:
    """`"package.module:Name"` -> an ASGI application: a consumer class's `as_asgi()`, or the object."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{key}: cannot import {module_name!r}: {err}") from None
    except Exception as err:  # its code failed as it ran
        raise ConfigError(f"{key}: cannot import {module_name!r}: {type(err).__name__}: {err}") from None
    target: Any = module
    for part in name.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"{key}: {module_name!r} has no {name!r}") from None
    if isinstance(target, type):
        if not hasattr(target, "as_asgi"):
            raise ConfigError(f"{key}: {spec!r} is a class without as_asgi(), not a Channels consumer")
        return target.as_asgi()
    if not _asgi3(target):
        raise ConfigError(
            f"{key}: {spec!r} is not an ASGI application "
            "(a Channels consumer class, or an async callable of scope, receive and send)"
        )
    return target


def _asgi3(target: Any) -> bool:
    """An ASGI 3 application: an async callable of (scope, receive, send), or one asgiref's marker says is."""
    if not callable(target):
        return False
    if not (
        inspect.iscoroutinefunction(target)
        or inspect.iscoroutinefunction(target.__call__)
        or getattr(target, "_asgi_single_callable", False)
    ):
        return False
    try:
        inspect.signature(target).bind(None, None, None)
    except (TypeError, ValueError):
        return False
    return True
