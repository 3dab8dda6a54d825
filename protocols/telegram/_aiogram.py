"""aiogram's and pydantic's private ways, in one place (checked on aiogram 3.31.0, pydantic 2.13.5).

`import aiogram` builds the validators of all its 444 models at once: `aiogram/types/__init__.py`
ends by calling `model_rebuild(_types_namespace=…)` on every type (seconds of CPU, about 100 MiB
here), though `TelegramObject` asks pydantic to defer building. `load` imports aiogram with that
call turned into keeping the namespace: each type gets it as `__pydantic_parent_namespace__`,
which pydantic reads when it builds the model on its first use; the methods (`SendMessage`, …)
get it too, since their fields name the types. On another version of either library, `load`
imports aiogram as it is (eagerly) and logs that once.
"""

from __future__ import annotations

import importlib
import threading
from importlib.metadata import version
from typing import Any

from gateway.ops import logs

__all__ = ["CHECKED", "INTERNALS", "checked", "load"]

CHECKED = {"aiogram": "3.31.0", "pydantic": "2.13.5"}
INTERNALS = ("BaseModel.model_rebuild(_types_namespace=)", "BaseModel.__pydantic_parent_namespace__")
_lock = threading.Lock()


def checked() -> bool:
    """Whether the installed aiogram and pydantic are the ones this module was checked on."""
    return all(version(package) == release for package, release in CHECKED.items())


def load(lazy: bool | None = None) -> bool:
    """Import aiogram; lazily (True) on the checked versions, else eagerly (False, logged)."""
    import sys

    if "aiogram" in sys.modules:
        return False
    if lazy is None:
        lazy = checked()
        if not lazy:
            logs.telegram.warning(
                "aiogram %s, pydantic %s (checked on %s, %s): its models are built at import",
                version("aiogram"),
                version("pydantic"),
                CHECKED["aiogram"],
                CHECKED["pydantic"],
            )
    if not lazy:
        importlib.import_module("aiogram")
        return False
    with _lock:
        _import_lazily()
    return True


def _import_lazily() -> None:
    from pydantic import BaseModel

    rebuild = BaseModel.__dict__["model_rebuild"]
    namespace: dict[str, Any] = {}

    def keep(cls: type[BaseModel], *args: Any, _types_namespace: Any = None, **kwargs: Any) -> Any:
        if _types_namespace is None or args or kwargs:
            return rebuild.__func__(cls, *args, _types_namespace=_types_namespace, **kwargs)
        namespace.update(_types_namespace)
        cls.__pydantic_parent_namespace__ = _types_namespace
        return None

    BaseModel.model_rebuild = classmethod(keep)  # type: ignore[method-assign,assignment]
    try:
        importlib.import_module("aiogram")
        methods = importlib.import_module("aiogram.methods")
    finally:
        BaseModel.model_rebuild = rebuild  # type: ignore[method-assign]
    for name in methods.__all__:
        cls = getattr(methods, name)
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            cls.__pydantic_parent_namespace__ = {**namespace, **(cls.__pydantic_parent_namespace__ or {})}
