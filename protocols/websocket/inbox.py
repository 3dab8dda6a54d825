"""`Inbox`: an application's `receive`, as daphne's `asyncio.Queue` is, for a fraction of its memory.

daphne gives every application instance an `asyncio.Queue`: four deques of 64 slots (its items,
getters, putters and its `Event`'s waiters), about 3 KiB that an idle dashboard holds for as long
as its socket is open, for the one message it may get now and then.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any


class Inbox:
    """First in, first out, unbounded; `put_nowait` from the server, `await get()` from the application.

    Its deque exists only while messages wait, and its waiters' list only while someone waits
    (an ASGI application has one; a second is served in turn).
    """

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        self._wake()

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if self._getters and getter in self._getters:
                    self._getters.remove(getter)
                elif self._items:
                    self._wake()  # it was woken for an item it will not take: the next waiter takes it
                raise
        items = self._items
        item = items.popleft()
        if not items:
            self._items = None
        elif self._getters:
            self._wake()
        return item

    def _wake(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break
        if not getters:
            self._getters = None
