"""HTTP: health, metrics, the alerts API, and the page at `/`."""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from gateway.alerting import ModeError, SilenceError
from gateway.config import parse_duration
from gateway.engine.alerts import AckRefused
from gateway.ops import logs, metrics
from gateway.runtime import Runtime
from gateway.web import _django
from gateway.web.auth import Caller
from protocols.websocket.http_guard import MAX_BODY, Gate, Head, Refusal

STATES = ("open", "active", "acknowledged", "cleared")


def _runtime(request: HttpRequest) -> Runtime:
    return request.scope["gateway"]  # type: ignore[attr-defined, no-any-return]


async def _caller(request: HttpRequest) -> Caller:
    runtime = _runtime(request)
    return await runtime.token_gate.identify(request.scope, runtime.config)  # type: ignore[attr-defined]


TOKEN_REQUIRED = "a valid token is required"
CHALLENGE = 'Bearer realm="gateway"'
# Bodies the views read are a login form, an ack or a Telegram update: one larger than the
# server's MAX_BODY is refused (413) before any of it is read, and one that needs a token gets
# its 401 first (protocols.websocket.http_guard).
MAX_UPDATE = 1024 * 1024  # Telegram's updates are far smaller, but one must never be refused


def _refusal(caller: Caller) -> tuple[int, str, dict[str, str]]:
    """The status, error and headers for a caller without a valid token."""
    if caller.throttled:
        error = f"too many wrong tokens from this address: try again in {caller.wait} s"
        return 429, error, {"Retry-After": str(caller.wait)}
    if caller.via == "none":  # a token that was tried is counted by the gate
        metrics.bad_input.labels("http", "token").inc()
    return 401, TOKEN_REQUIRED, {"WWW-Authenticate": CHALLENGE}


def _unauthorized(caller: Caller) -> JsonResponse:
    status, error, headers = _refusal(caller)
    return _django.logged(JsonResponse({"error": error}, status=status, headers=headers))


def _webhook(runtime: Runtime) -> bool:
    return runtime.telegram is not None and runtime.telegram.settings.mode == "webhook"


def gate(runtime: Runtime) -> Gate:
    """What a request may send, decided on its head alone: how many body bytes, or a refusal."""

    def admit(head: Head) -> Refusal | int:
        if head.path.startswith("/telegram/") and _webhook(runtime):
            return MAX_UPDATE
        if head.length != 0 and head.path.startswith("/api/"):
            scope = {"headers": head.headers, "query_string": head.query_string, "client": head.client}
            # Through the same brake as every other try; a session cookie needs the database,
            # so it is looked up by the view (its body is bounded all the same).
            caller = runtime.token_gate.identify_now(scope, runtime.config)
            if caller is not None and caller.who is None:
                status, error, headers = _refusal(caller)
                fields = tuple((k.encode(), v.encode()) for k, v in headers.items())
                return Refusal(status, error, fields)  # counted by the gate and _refusal
        return MAX_BODY

    return admit


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    health = _runtime(request).health
    return JsonResponse(health.report(), status=200 if health.ok else 503)


@require_GET
async def metrics_view(request: HttpRequest) -> HttpResponse:
    text, content_type = metrics.exposition()
    return HttpResponse(text, content_type=content_type)


@require_GET
async def alerts(request: HttpRequest) -> JsonResponse:
    caller = await _caller(request)
    if caller.who is None:
        return _unauthorized(caller)
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


@require_GET
async def sensors(request: HttpRequest) -> JsonResponse:
    """Every sensor as the dashboard shows it: value, `display`, `unit`, `device_class`, online."""
    caller = await _caller(request)
    if caller.who is None:
        return _unauthorized(caller)
    return JsonResponse({"sensors": _runtime(request).board.snapshot()})


DEFAULT_SINCE = "24h"


@require_GET
async def history(request: HttpRequest, sensor_id: str) -> JsonResponse:
    """A sensor's per-minute min, max and last (SPEC §11), oldest first, the current minute included."""
    caller = await _caller(request)
    if caller.who is None:
        return _unauthorized(caller)
    runtime = _runtime(request)
    if sensor_id not in runtime.board.sensors:
        return JsonResponse({"error": f"no sensor {sensor_id[:128]!r}"}, status=404)
    keep = runtime.history.keep
    if keep <= 0:
        return JsonResponse({"error": 'no history is kept ([history] keep = "0")'}, status=404)
    text = request.GET.get("since", DEFAULT_SINCE)
    try:
        since = parse_duration(text)
    except ValueError:
        since = -1.0
    if not 0 < since <= keep:
        return _bad(
            "since", f"since must be a duration such as 1h or 24h, at most {_span(keep)} (the history kept)"
        )
    points = await runtime.history.points(sensor_id, since, time.time())
    return JsonResponse({"points": points})


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


_csrf = CsrfViewMiddleware(lambda request: HttpResponse())


async def _changer(request: HttpRequest) -> tuple[Caller, HttpResponse | None]:
    """Who asks for a change, or the refusal: a token (401), or a cookie without CSRF (403)."""
    caller = await _caller(request)
    if caller.who is None:
        return caller, _unauthorized(caller)
    if caller.via == "cookie":
        # A cookie rides along on a form another site forges; a bearer token does not.
        _csrf.process_request(request)
        refused = _csrf.process_view(request, None, (), {})
        if refused is not None:
            return caller, refused
    return caller, None


def _by(caller: Caller) -> str:
    """`api:<token name>` (SPEC §10), or `api` alone when no tokens are set."""
    return "api" if caller.via == "open" else f"api:{caller.who}"


def _bad(reason: str, error: str, **extra: Any) -> JsonResponse:
    metrics.bad_input.labels("http", reason).inc()
    return JsonResponse({"error": error, **extra}, status=400)


def _json_body(request: HttpRequest) -> Any:
    """The body's JSON (its size is bounded by the server: MAX_BODY); ValueError if it is none."""
    try:
        return json.loads(request.body)
    except RecursionError:
        raise ValueError("nested too deeply") from None


@csrf_exempt  # checked below, and only when the dashboard's cookie is what authenticates
@require_POST
async def ack(request: HttpRequest, alert_id: str) -> HttpResponse:
    caller, refused = await _changer(request)
    if refused is not None:
        return refused
    runtime = _runtime(request)
    try:
        change = await runtime.book.acknowledge(alert_id, f"web:{caller.who}")
    except AckRefused as err:
        status = 404 if "no alert" in str(err) else 409
        return JsonResponse({"error": str(err)}, status=status)
    logs.alerts.info("alert %s acknowledged by web:%s (API)", change.alert["id"], caller.who)
    await runtime.broadcast(change)
    return JsonResponse({"alert": change.alert, "seq": change.seq})


@csrf_exempt  # POST: checked in _changer, as for ack
@require_http_methods(["GET", "POST"])
async def silences(request: HttpRequest) -> HttpResponse:
    runtime = _runtime(request)
    if request.method == "GET":
        caller = await _caller(request)
        if caller.who is None:
            return _unauthorized(caller)
        return JsonResponse({"silences": runtime.alerting.silences_json()})
    caller, refused = await _changer(request)
    if refused is not None:
        return refused
    try:
        body = _json_body(request)
    except ValueError:
        return _bad("silence", 'the body must be JSON such as {"zone": "kitchen", "for": "2h"}')
    try:
        silence = await runtime.alerting.create_silence(body, _by(caller))
    except SilenceError as err:
        return _bad("silence", str(err))
    return JsonResponse({"silence": silence}, status=201)


@csrf_exempt  # checked in _changer, as for ack
@require_http_methods(["DELETE"])
async def silence(request: HttpRequest, silence_id: str) -> HttpResponse:
    caller, refused = await _changer(request)
    if refused is not None:
        return refused
    ended = await _runtime(request).alerting.end_silence(silence_id, _by(caller))
    if ended is None:
        return JsonResponse({"error": f"no active silence {silence_id[:40]!r}"}, status=404)
    return JsonResponse({"silence": ended})


@csrf_exempt  # POST: checked in _changer, as for ack
@require_http_methods(["GET", "POST"])
async def mode(request: HttpRequest) -> HttpResponse:
    alerting = _runtime(request).alerting
    if request.method == "GET":
        caller = await _caller(request)
        if caller.who is None:
            return _unauthorized(caller)
        return JsonResponse(alerting.mode_json())
    caller, refused = await _changer(request)
    if refused is not None:
        return refused
    try:
        body = _json_body(request)
    except ValueError:
        body = None
    if not isinstance(body, dict) or "mode" not in body:
        return _bad("mode", 'the body must be JSON such as {"mode": "away"}', modes=alerting.modes)
    try:
        return JsonResponse(await alerting.set_mode(body["mode"], _by(caller)))
    except ModeError as err:
        return _bad("mode", str(err), modes=alerting.modes)


@csrf_exempt  # Telegram authenticates with the secret path and header, not with cookies
@require_POST
async def telegram_webhook(request: HttpRequest, secret: str) -> JsonResponse:
    """Updates from Telegram in webhook mode, handed to the same path as polled ones."""
    runtime = _runtime(request)
    server = runtime.telegram
    if not _webhook(runtime):
        return not_found(request)
    expected_path = server.settings.webhook_path
    header = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
    if not (
        hmac.compare_digest(f"/telegram/{secret}/", expected_path)
        and hmac.compare_digest(header.encode(), server.settings.webhook_secret.encode())
    ):
        metrics.bad_input.labels("telegram", "webhook_secret").inc()
        logs.telegram.warning(
            "refused a webhook call without the right secret from %s", request.META.get("REMOTE_ADDR")
        )
        return JsonResponse({"error": "forbidden"}, status=403)
    from protocols.telegram.updates import update_id  # Telegram's module: loaded when it is on

    try:
        update = json.loads(request.body)
        if update_id(update) is None:
            raise ValueError("not an object with an update_id from 0 up")
    except ValueError as err:
        metrics.bad_input.labels("telegram", "webhook_body").inc()
        logs.telegram.warning("webhook: the body is not a JSON update (%s)", err)
        return JsonResponse({"error": "the body must be a JSON Update object"}, status=400)
    if not server.feed(update):
        # Another process runs the bot, or this one is starting: Telegram retries later.
        return JsonResponse({"error": "not ready"}, status=503)
    return JsonResponse({"ok": True})


def not_found(request: HttpRequest, exception: Any = None) -> JsonResponse:
    return JsonResponse({"error": "not found"}, status=404)
