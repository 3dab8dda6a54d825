"""The gateway's routers (`gateway.asgi`) hand a scope on without a coroutine of their own, and
route it as channels' routers do: the same scope reaches the consumer, and a failure still
happens in the connection's task."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import django
import pytest
from channels.routing import ProtocolTypeRouter, URLRouter
from django.conf import settings
from django.urls import path, re_path

if not settings.configured:
    settings.configure(CHANNEL_LAYERS={}, INSTALLED_APPS=["gateway.store.apps.GatewayConfig"])
django.setup()

from gateway.asgi import PathRouter, WithRuntime  # noqa: E402 - needs the apps loaded
from protocols.dispatch import DirectDispatch  # noqa: E402


async def _nothing() -> dict[str, Any]:
    return {}


async def _ignore(message: dict[str, Any]) -> None:
    return None


class Recorder(DirectDispatch):
    seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.seen.append({k: v for k, v in scope.items() if k != "gateway"})


class Broken(DirectDispatch):
    def __init__(self) -> None:
        raise RuntimeError("this consumer cannot be made")


def _routes(router: Any) -> Any:
    inner = router([path("<str:site>/", Recorder.as_asgi())])
    return router([path("ws/", inner), re_path(r"^other/(?P<n>\d+)/$", Recorder.as_asgi())])


@pytest.mark.parametrize("target", ["/ws/north/", "/other/7/"])
async def test_the_consumer_gets_the_scope_channels_routers_give_it(target: str) -> None:
    runtime = SimpleNamespace(config=None)
    scope = {"type": "mqtt", "path": target}
    Recorder.seen.clear()
    await ProtocolTypeRouter({"mqtt": _routes(URLRouter)})(dict(scope), _nothing, _ignore)
    await WithRuntime({"mqtt": _routes(PathRouter)}, runtime)(dict(scope), _nothing, _ignore)
    channels_scope, ours = Recorder.seen
    assert ours == channels_scope and "url_route" in ours


async def test_the_router_returns_the_consumers_own_coroutine() -> None:
    app = WithRuntime({"mqtt": PathRouter([path("ws/", Recorder.as_asgi())])}, SimpleNamespace())
    coroutine = app({"type": "mqtt", "path": "/ws/"}, _nothing, _ignore)
    assert coroutine.__qualname__ == "Recorder.__call__"
    await coroutine


@pytest.mark.parametrize(
    ("routes", "error"),
    [
        ({"mqtt": Broken.as_asgi()}, "this consumer cannot be made"),
        ({"mqtt": PathRouter([path("ws/", Recorder.as_asgi())])}, "No route found for path 'nowhere/'"),
        ({}, "No application configured for scope type 'mqtt'"),
    ],
)
async def test_a_failure_to_route_or_make_a_consumer_fails_in_its_task(routes: Any, error: str) -> None:
    app = WithRuntime(routes, SimpleNamespace())
    awaitable = app({"type": "mqtt", "path": "/nowhere/"}, _nothing, _ignore)
    with pytest.raises(Exception, match=error):
        await awaitable
