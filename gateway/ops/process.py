"""The process's resources: what it imports, what the garbage collector walks, how many files it
may open. Set once at start-up, by gateway.server."""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from typing import Any

from gateway.ops import logs

log = logs.server


def without_pyopenssl() -> None:
    """Keep pyOpenSSL (and cryptography's X.509 with it) out of this process: 5 MiB of RSS.

    daphne listens on plain TCP here (TLS ends at a proxy in front, see docs/deploy.md), yet
    Twisted and autobahn import pyOpenSSL whenever it is installed (twisted[tls], pulled in by
    daphne) for TLS they would never use. Made unimportable before they look, both take the
    no-TLS path they have for an install without it. Nothing else here needs pyOpenSSL: paho,
    aiohttp (Telegram), redis-py and amqtt use the standard `ssl` module.
    """
    if "OpenSSL" not in sys.modules:
        sys.modules["OpenSSL"] = None  # type: ignore[assignment] # import OpenSSL -> ImportError


def package_on_use(name: str) -> None:
    """Put package `name` in `sys.modules` with its `__init__` run only when a name of its own is
    first looked up; its submodules import as usual meanwhile (without it, each runs it first),
    and one looked up as the package's attribute is imported.

    For a package whose `__init__` imports much that the gateway never uses, where the gateway
    imports the submodules it needs by their own names. Nothing if it is imported already.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def on_use(attribute: str) -> Any:
        if importlib.util.find_spec(f"{name}.{attribute}") is not None:
            return importlib.import_module(f"{name}.{attribute}")  # `from package import submodule`
        del package.__getattr__  # once: from here on the package's names are its own
        loader.exec_module(package)
        return getattr(package, attribute)

    package.__getattr__ = on_use  # type: ignore[method-assign]
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, package)  # as an import binds it (find_spec imported it)


@contextlib.contextmanager
def hidden(*names: str) -> Iterator[None]:
    """While inside, importing one of `names` (not imported yet) raises ImportError; afterwards it
    imports as usual. For a library's first import, where it takes an optional dependency it finds
    for a feature the gateway never uses."""
    hiding = [name for name in names if name not in sys.modules]
    for name in hiding:
        sys.modules[name] = None  # type: ignore[assignment] # import name -> ImportError
    try:
        yield
    finally:
        for name in hiding:
            if sys.modules.get(name, "") is None:
                del sys.modules[name]


# CPython collects generation 0 every 700 net allocations of containers; reference counting
# frees nearly everything here, the collector only finds cycles. Rarer passes (see settle_heap).
GC_THRESHOLDS = (20_000, 20, 10)


def settle_heap() -> None:
    """Take what start-up made (modules, classes, settings) out of the garbage collector's walks.

    Those objects live until exit, yet every full collection walked all of them: with
    1,000 dashboards open, full passes took 50-200 ms and were the p99 of an alert's
    fan-out. Frozen, and with passes rarer (`GC_THRESHOLDS`), they stop being that.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # And the C heap's free pages back to the system (glibc's malloc_trim): start-up frees memory
    # that glibc keeps (modules compiled without .pyc, the migration check, the config): 1.1 MiB.
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def descriptors(needed: int) -> None:
    """Raise the soft limit on open files to `needed` where the hard one allows; warn if it cannot.

    Past the limit every new connection fails (accept: EMFILE), dashboards and health checks alike.
    Under systemd the unit's LimitNOFILE sets it (and @resources is filtered: no raising there).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < needed:
        log.warning(
            "open files are limited to %d, but http.max_websockets and http.max_half_open need about %d: "
            "raise the limit (LimitNOFILE= in the unit, ulimit -n) or lower them",
            soft,
            needed,
        )
