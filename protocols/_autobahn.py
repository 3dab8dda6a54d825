"""autobahn's private names, in one place: prepared frames written past it (checked on autobahn 26.11.1).

`frame` gives a prepared message's bytes (`PreparedMessage.payloadHybi`) when a protocol may
take them as they are: no compression negotiated (`_perMessageCompress`), nothing waiting in
autobahn's queue (`send_queue`). The WebSocket server then writes them to the transport itself.

autobahn is imported on first use, not here (it imports Twisted, whose reactor must be
daphne's), so `FAST` (whether this autobahn has every name in `INTERNALS`) is decided once, on
first use (the web server's start). Without them every frame goes through autobahn's
`sendPreparedMessage` (slower: a deferred write each); start-up logs it once.

`lean` imports autobahn without what only WAMP (the other protocol autobahn speaks) and its
command line use: 9 MiB of RSS that a WebSocket server never needs (see `lean`); and with its
native UTF-8 validator and XOR masker taken from their compiled modules, without the modules'
build step (see `compiled_nvx`).
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gateway.ops import logs
from gateway.ops.process import hidden, package_on_use

CHECKED = {"autobahn": "26.11.1"}
INTERNALS = (
    "PreparedMessage.payloadHybi",
    "WebSocketProtocol._perMessageCompress",
    "WebSocketProtocol.send_queue",
)

FAST: bool | None = None  # None: not decided yet (see `enabled`)


def check() -> bool:
    """Whether this autobahn has every name in `INTERNALS`; logs what is missing when not."""
    from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol

    # Instance attributes, named where they are set: the constructor, or the connection's start.
    named = {
        "PreparedMessage": _names(PreparedMessage.__init__),
        "WebSocketProtocol": _names(getattr(WebSocketProtocol, "_connectionMade", None)),
    }
    missing = [
        internal for internal in INTERNALS if internal.split(".")[1] not in named[internal.split(".")[0]]
    ]
    if missing:
        from importlib.metadata import version  # here: half a MiB the gateway does not import

        logs.web.warning(
            "autobahn %s lacks %s (checked on %s): WebSocket frames take autobahn's slower public path",
            version("autobahn"),
            ", ".join(missing),
            CHECKED["autobahn"],
        )
    return not missing


def _names(function: Any) -> tuple[str, ...]:
    code = getattr(function, "__code__", None)
    return code.co_names if code is not None else ()


def enabled() -> bool:
    """`FAST`, decided on the first call (autobahn may be imported by then)."""
    global FAST
    if FAST is None:
        FAST = check()
    return FAST


def frame(protocol: Any, prepared: Any) -> bytes | None:
    """The bytes of `prepared` if `protocol` may take them as they are; None: `sendPreparedMessage`."""
    if (FAST or enabled()) and protocol._perMessageCompress is None and not protocol.send_queue:
        return prepared.payloadHybi  # type: ignore[no-any-return]
    return None


# What autobahn imports when it can, for WAMP and its command line only: click (autobahn.util's
# colours), cbor2 (WAMP's FlatBuffers messages; WAMP imports it again where it uses it).
WAMP_ONLY = ("click", "cbor2")


@contextmanager
def lean() -> Iterator[None]:
    """For autobahn's first import, in here: the `__init__` of package `autobahn.twisted` runs when
    one of its names is first used, not when daphne imports `autobahn.twisted.websocket`, and
    `WAMP_ONLY` are not found (afterwards they are, for whoever else wants them).

    That `__init__` only re-exports, and imports `autobahn.twisted.wamp`, whose authentication
    imports cryptography (a 6 MiB Rust library) and argon2: 7 MiB of RSS. `WAMP_ONLY`: 1.8 MiB.
    """
    package_on_use("autobahn.twisted")
    compiled_nvx()
    with hidden(*WAMP_ONLY):
        yield


# autobahn's modules that `compiled_nvx` stands in for, and the C functions it calls, by module.
NVX_MODULES = ("autobahn.nvx._utf8validator", "autobahn.nvx._xormasker")
NVX = {
    "_nvx_utf8validator": (
        "nvx_utf8vld_new",
        "nvx_utf8vld_free",
        "nvx_utf8vld_reset",
        "nvx_utf8vld_validate",
        "nvx_utf8vld_get_current_index",
        "nvx_utf8vld_get_total_index",
    ),
    "_nvx_xormasker": (
        "nvx_xormask_new",
        "nvx_xormask_free",
        "nvx_xormask_reset",
        "nvx_xormask_pointer",
        "nvx_xormask_process",
        "nvx_xormask_set_impl",
    ),
}
# Where autobahn's masker switches to SIMD (`autobahn.nvx._xormasker.create_xor_masker`).
SIMD_FROM = 128


def compiled_nvx() -> bool:
    """Put `autobahn.nvx._utf8validator` and `._xormasker` in `sys.modules` as thin classes on
    autobahn's compiled modules; True if it did.

    autobahn's own modules (what `autobahn.websocket` imports when NVX is built) run their build
    step at every import: cffi parses their C declarations with pycparser and they read their C
    source, for `ffi.compile()`. That is 1.5 MiB of RSS and 30 ms; the compiled modules carry their
    own `ffi` and `lib`. Not done (autobahn's are imported as they are) on another autobahn than
    `CHECKED`, when its compiled modules lack a function of `NVX` (both logged), when
    `AUTOBAHN_USE_NVX` turns NVX off, or when it is not built.
    """
    if any(name in sys.modules for name in NVX_MODULES):
        return False
    if os.environ.get("AUTOBAHN_USE_NVX", "").strip().lower() in ("0", "no", "false"):
        return False
    try:
        import _nvx_utf8validator as validator_module  # type: ignore[import-not-found]
        import _nvx_xormasker as masker_module  # type: ignore[import-not-found]
        from autobahn._version import __version__
    except ImportError:
        return False  # NVX not built: autobahn uses its pure-Python validator and masker
    if __version__ != CHECKED["autobahn"]:
        logs.web.warning(
            "autobahn %s (checked on %s): its NVX modules are imported with their build step (1.5 MiB)",
            __version__,
            CHECKED["autobahn"],
        )
        return False
    modules = {"_nvx_utf8validator": validator_module, "_nvx_xormasker": masker_module}
    missing = [
        f for module, functions in NVX.items() for f in functions if not hasattr(modules[module].lib, f)
    ]
    if missing:
        logs.web.warning(
            "autobahn %s's NVX modules lack %s: they are imported with their build step (1.5 MiB)",
            __version__,
            ", ".join(missing),
        )
        return False
    vffi, vlib = validator_module.ffi, validator_module.lib
    xffi, xlib = masker_module.ffi, masker_module.lib

    class Utf8Validator:
        """An incremental UTF-8 validator, as `autobahn.nvx._utf8validator.Utf8Validator`."""

        __slots__ = ("_vld",)

        def __init__(self) -> None:
            self._vld = vffi.gc(vlib.nvx_utf8vld_new(), vlib.nvx_utf8vld_free)

        def reset(self) -> None:
            vlib.nvx_utf8vld_reset(self._vld)

        def validate(self, data: bytes) -> tuple[bool, bool, int, int]:
            """(valid so far, ends on a code point, index in this piece, index in all)."""
            result = vlib.nvx_utf8vld_validate(self._vld, data, len(data))
            return (
                result >= 0,
                result == 0,
                vlib.nvx_utf8vld_get_current_index(self._vld),
                vlib.nvx_utf8vld_get_total_index(self._vld),
            )

    class XorMasker:
        """A WebSocket frame's (un)masker, as autobahn.nvx's `XorMaskerNvx`."""

        __slots__ = ("_mask", "_masker")

        def __init__(self, mask: bytes, simd: bool) -> None:
            if len(mask) != 4:
                raise ValueError("a WebSocket mask is 4 bytes")
            self._mask = xffi.new("uint8_t[4]", mask)  # kept alive as long as the masker
            self._masker = xffi.gc(xlib.nvx_xormask_new(self._mask), xlib.nvx_xormask_free)
            xlib.nvx_xormask_set_impl(self._masker, 2 if simd else 1)  # SSE2, or scalar

        def pointer(self) -> int:
            return int(xlib.nvx_xormask_pointer(self._masker))

        def reset(self) -> None:
            xlib.nvx_xormask_reset(self._masker)

        def process(self, data: bytes) -> bytes:
            size = len(data)
            buffer = xffi.new("uint8_t[]", size)
            xffi.memmove(buffer, data, size)
            xlib.nvx_xormask_process(self._masker, buffer, size)
            return bytes(xffi.buffer(buffer, size))

    def create_xor_masker(mask: bytes, length: int | None = None) -> XorMasker:
        return XorMasker(mask, length is not None and length >= SIMD_FROM)

    contents: dict[str, dict[str, Any]] = {
        NVX_MODULES[0]: {"Utf8Validator": Utf8Validator},
        NVX_MODULES[1]: {"create_xor_masker": create_xor_masker, "XorMasker": XorMasker},
    }
    for name, attributes in contents.items():
        module = types.ModuleType(
            name, "autobahn's compiled NVX module without its build step (protocols._autobahn)"
        )
        module.__dict__.update(attributes)
        sys.modules[name] = module
    return True
