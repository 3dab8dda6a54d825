"""HTTP: health, metrics, the alerts API, and the page at `/`."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import logs, metrics
from gateway.alerts import AckRefused
from gateway.auth import scope_owner
from gateway.runtime import Runtime

STATES = ("open", "active", "acknowledged", "cleared")


def _runtime(request: HttpRequest) -> Runtime:
    return request.scope["gateway"]  # type: ignore[attr-defined, no-any-return]


def _owner(request: HttpRequest) -> str | None:
    return scope_owner(request.scope, _runtime(request).config.auth.tokens)  # type: ignore[attr-defined]


def _unauthorized() -> JsonResponse:
    metrics.bad_input.labels("http", "token").inc()
    response = JsonResponse({"error": "a valid token is required"}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="gateway"'
    return response


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    health = _runtime(request).health
    return JsonResponse(health.report(), status=200 if health.ok else 503)


@require_GET
async def metrics_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)


@require_GET
async def alerts(request: HttpRequest) -> JsonResponse:
    if _owner(request) is None:
        return _unauthorized()
    state = request.GET.get("state") or None
    if state is not None and state not in STATES:
        return JsonResponse({"error": f"state must be one of {', '.join(STATES)}"}, status=400)
    try:
        limit = int(request.GET.get("limit", "100"))
    except ValueError:
        limit = -1
    if not 1 <= limit <= 1000:
        return JsonResponse({"error": "limit must be a whole number from 1 to 1000"}, status=400)
    rows = await _runtime(request).book.list_alerts(state, limit)
    return JsonResponse({"alerts": rows})


@csrf_exempt  # token-authenticated, no cookies: nothing for a forged form to ride on
@require_POST
async def ack(request: HttpRequest, alert_id: str) -> JsonResponse:
    who = _owner(request)
    if who is None:
        return _unauthorized()
    runtime = _runtime(request)
    try:
        change = await runtime.book.acknowledge(alert_id, f"web:{who}")
    except AckRefused as err:
        status = 404 if "no alert" in str(err) else 409
        return JsonResponse({"error": str(err)}, status=status)
    logs.alerts.info("alert %s acknowledged by web:%s (API)", change.alert["id"], who)
    await runtime.broadcast(change)
    return JsonResponse({"alert": change.alert, "seq": change.seq})


INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gateway</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><h1>gateway</h1><p>Site <b>%(site)s</b>. The live dashboard is on its way; meanwhile,
WebSocket clients connect to <code>/ws/alerts/</code>, health is at <a href="/healthz">/healthz</a>.</p>
</body></html>"""


@require_GET
async def index(request: HttpRequest) -> HttpResponse:
    from django.utils.html import escape

    return HttpResponse(INDEX % {"site": escape(_runtime(request).config.gateway.site)})


def not_found(request: HttpRequest, exception: Any = None) -> JsonResponse:
    return JsonResponse({"error": "not found"}, status=404)
