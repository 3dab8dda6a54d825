"""Django's private names, in one place (checked on Django 5.2.19 and 5.2.20).

`logged`: a response marked as logged already (`_has_been_logged`, which Django's
`log_response` reads), so Django does not log it again: the gate logs its refusals itself,
rate-limited. `FAST` says at import whether this Django still reads the mark; without it
Django logs each refused request too (less exact: a line per refusal); start-up logs it once.
"""

from __future__ import annotations

from django.http import HttpResponse
from django.utils.log import log_response

from gateway.ops import logs

CHECKED = {"django": "5.2.20"}
INTERNALS = ("HttpResponse._has_been_logged",)


def check() -> bool:
    """Whether this Django's `log_response` reads the mark; logs it when not."""
    if "_has_been_logged" in log_response.__code__.co_consts:  # getattr(response, "_has_been_logged", False)
        return True
    from importlib.metadata import version  # here: half a MiB the gateway does not import

    logs.web.warning(
        "Django %s no longer reads %s (checked on %s): it logs every refused request too",
        version("django"),
        INTERNALS[0],
        CHECKED["django"],
    )
    return False


FAST = check()


def logged(response: HttpResponse) -> HttpResponse:
    """`response`, marked as logged already (by the gate, rate-limited): Django does not log it."""
    if FAST:
        response._has_been_logged = True  # type: ignore[attr-defined]
    return response
