"""The dashboard's HTTP side: the page at `/`, login and logout, and its static assets."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from string import Template

from django.conf import settings
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotModified,
    HttpResponseRedirect,
)
from django.middleware.csrf import get_token, rotate_token
from django.utils.html import escape
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from gateway.ops import logs, metrics
from gateway.runtime import Runtime
from gateway.web import _django
from gateway.web.auth import Caller, client_address, end_session, start_session

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
    return client_address(request.scope, _runtime(request).config.http.trusted_proxies)  # type: ignore[attr-defined]


async def _signed_in(request: HttpRequest, runtime: Runtime, who: str) -> HttpResponse:
    key = await start_session(runtime.config.auth.tokens, who)
    rotate_token(request)  # a CSRF token that was seen before the login is not good after it
    logs.web.info("dashboard login as %s from %s", who, _client(request))
    response = HttpResponseRedirect("/", status=303)
    response.set_cookie(
        settings.SESSION_COOKIE_NAME,
        key,
        max_age=settings.SESSION_COOKIE_AGE,
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


async def _try_token(request: HttpRequest, caller: Caller) -> HttpResponse:
    """A token from the form or from `?token=`: a session, or the form again saying why not."""
    if caller.who is not None:
        return await _signed_in(request, _runtime(request), caller.who)
    if caller.throttled:
        response = _login_form(request, f"Too many wrong tokens. Try again in {caller.wait} s.", status=429)
        response["Retry-After"] = str(caller.wait)
    else:
        message = "That token is not valid."
        if caller.wait:
            message += f" Wait {caller.wait} s before the next try."
        response = _login_form(request, message, status=401)
    return _django.logged(response)


@csrf_protect
@require_GET
async def index(request: HttpRequest) -> HttpResponse:
    runtime = _runtime(request)
    caller = await runtime.token_gate.identify(request.scope, runtime.config)  # type: ignore[attr-defined]
    if caller.via == "query":
        # Kiosk screens: the token in the URL becomes a session, and leaves the address bar.
        return await _try_token(request, caller)
    if caller.who is None:
        response = HttpResponseRedirect("/login")
        if caller.via == "cookie":
            response.delete_cookie(settings.SESSION_COOKIE_NAME, samesite="Strict")  # ended: not sent again
        return response
    return _page(
        "index.html",
        site=runtime.config.gateway.site,
        who=caller.who,
        csrf=get_token(request),
        logout_hidden="" if runtime.config.auth.tokens else "hidden",
    )


@csrf_protect
@require_http_methods(["GET", "POST"])
async def login(request: HttpRequest) -> HttpResponse:
    runtime = _runtime(request)
    if not runtime.config.auth.tokens:
        return HttpResponseRedirect("/")
    if request.method == "GET":
        return _login_form(request)
    token = request.POST.get("token", "")
    return await _try_token(request, await runtime.token_gate.identify(request.scope, runtime.config, token))  # type: ignore[attr-defined]


@csrf_protect
@require_POST
async def logout(request: HttpRequest) -> HttpResponse:
    key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    if key:
        await end_session(key)  # on the server: a copy of the cookie is worth nothing after this
    response = HttpResponseRedirect("/login", status=303)
    response.delete_cookie(settings.SESSION_COOKIE_NAME, samesite="Strict")
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
