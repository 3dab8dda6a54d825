"""The dashboard's HTTP side: the page at `/`, login and logout, and its static assets."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from string import Template

from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotModified,
    HttpResponseRedirect,
)
from django.middleware.csrf import get_token
from django.utils.html import escape
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from gateway import logs, metrics
from gateway.auth import SESSION_COOKIE, SESSION_DAYS, authenticate, session_value, token_owner
from gateway.runtime import Runtime

STATIC = Path(__file__).resolve().parent / "static"
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def _runtime(request: HttpRequest) -> Runtime:
    return request.scope["gateway"]  # type: ignore[attr-defined, no-any-return]


@cache
def _template(name: str) -> Template:
    return Template((STATIC / name).read_text(encoding="utf-8"))


def _page(name: str, status: int = 200, **fields: str) -> HttpResponse:
    html = _template(name).substitute({key: escape(value) for key, value in fields.items()})
    response = HttpResponse(html, status=status, content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return response


def _client(request: HttpRequest) -> str:
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def _signed_in(request: HttpRequest, runtime: Runtime, who: str) -> HttpResponse:
    response = HttpResponseRedirect("/", status=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_value(runtime.config.auth.tokens, who),
        max_age=SESSION_DAYS * 24 * 3600,
        httponly=True,
        samesite="Strict",
        secure=request.is_secure(),
    )
    response["Cache-Control"] = "no-store"
    return response


def _login_form(request: HttpRequest, error: str = "", status: int = 200) -> HttpResponse:
    runtime = _runtime(request)
    return _page(
        "login.html",
        status,
        site=runtime.config.gateway.site,
        csrf=get_token(request),
        error=error,
        error_hidden="" if error else "hidden",
    )


def _try_token(request: HttpRequest, token: str) -> HttpResponse:
    """A token from the form or from `?token=`: a session, or a refusal that slows the next try."""
    runtime = _runtime(request)
    client = _client(request)
    wait = runtime.login_brake.wait(client)
    if wait > 0:
        metrics.bad_input.labels("http", "login_throttled").inc()
        response = _login_form(
            request, f"Too many wrong tokens. Try again in {int(wait + 0.999)} s.", status=429
        )
        response["Retry-After"] = str(int(wait + 0.999))
        return response
    who = token_owner(runtime.config.auth.tokens, token)
    if who is None:
        earned = runtime.login_brake.failed(client)
        metrics.bad_input.labels("http", "login").inc()
        logs.web.warning("wrong dashboard token from %s", client)
        message = "That token is not valid."
        if earned > 0:
            message += f" Wait {int(earned + 0.999)} s before the next try."
        return _login_form(request, message, status=401)
    runtime.login_brake.succeeded(client)
    logs.web.info("dashboard login as %s from %s", who, client)
    return _signed_in(request, runtime, who)


@csrf_protect
@require_GET
async def index(request: HttpRequest) -> HttpResponse:
    runtime = _runtime(request)
    tokens = runtime.config.auth.tokens
    if tokens and "token" in request.GET:
        # Kiosk screens: the token in the URL becomes a session, and leaves the address bar.
        return _try_token(request, request.GET["token"])
    who, _ = authenticate(request.scope, tokens)  # type: ignore[attr-defined]
    if who is None:
        return HttpResponseRedirect("/login")
    return _page(
        "index.html",
        site=runtime.config.gateway.site,
        who=who,
        csrf=get_token(request),
        logout_hidden="" if tokens else "hidden",
    )


@csrf_protect
@require_http_methods(["GET", "POST"])
async def login(request: HttpRequest) -> HttpResponse:
    runtime = _runtime(request)
    if not runtime.config.auth.tokens:
        return HttpResponseRedirect("/")
    if request.method == "GET":
        return _login_form(request)
    return _try_token(request, request.POST.get("token", ""))


@csrf_protect
@require_POST
async def logout(request: HttpRequest) -> HttpResponse:
    response = HttpResponseRedirect("/login", status=303)
    response.delete_cookie(SESSION_COOKIE, samesite="Strict")
    return response


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    metrics.bad_input.labels("http", "csrf").inc()
    logs.web.warning("refused a form without a valid CSRF token from %s: %s", _client(request), reason)
    return HttpResponse(
        "Refused: the form was not sent by this dashboard (CSRF check failed). "
        "Reload the page and try again.",
        status=403,
        content_type="text/plain; charset=utf-8",
    )


Asset = tuple[bytes, str, str]  # body, content type, ETag


@cache
def assets() -> dict[str, Asset]:
    """Every file directly in static/ with a listed type, read once: no path tricks, no templates.

    A request names one of these or gets a 404: the name never reaches the file system (one of
    300 characters was a 500), and a name that is not here is not remembered either.
    """
    found = {}
    for path in sorted(STATIC.iterdir()):
        kind = ASSET_TYPES.get(path.suffix)
        if kind is not None and path.is_file() and not path.name.startswith("."):
            body = path.read_bytes()
            found[path.name] = (body, kind, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return found


def find_asset(name: str) -> Asset | None:
    return assets().get(name)


@require_GET
async def asset(request: HttpRequest, name: str) -> HttpResponseBase:
    found = find_asset(name)
    if found is None:
        return HttpResponse("not found", status=404, content_type="text/plain")
    body, kind, etag = found
    if request.headers.get("If-None-Match") == etag:
        response: HttpResponseBase = HttpResponseNotModified()
    else:
        response = HttpResponse(body, content_type=f"{kind}; charset=utf-8" if "svg" not in kind else kind)
    response["ETag"] = etag
    response["Cache-Control"] = "no-cache"  # revalidate: an upgrade reaches wall screens on reload
    return response


@require_GET
async def favicon(request: HttpRequest) -> HttpResponseBase:
    # Browsers ask for /favicon.ico on pages that name no icon (error pages, JSON).
    return await asset(request, "favicon.svg")
