"""`[[consumers]]` and `[[workers]]`: the extender's own applications, named by import path.

Here only their shape is checked; `gateway.asgi` imports them once Django is set up.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator, model_validator

__all__ = ["Consumer", "Worker", "check_extensions"]


def _import_path(value: str) -> str:
    module, sep, name = value.partition(":")
    if not sep or not all(part.isidentifier() for part in [*module.split("."), *name.split(".")]):
        raise ValueError(f'must be "package.module:Name", got {value!r}')
    return value


ImportPath = Annotated[str, AfterValidator(_import_path)]


class Consumer(BaseModel):
    model_config = ConfigDict(extra="forbid")  # as every section: a misspelt key is an error

    protocol: Literal["mqtt", "websocket", "telegram"]
    app: ImportPath
    topic: str = ""  # mqtt: an exact topic (a device from start-up) or a filter (one device per topic)
    path: str = ""  # websocket: a Django route such as "ws/valve/"

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        levels = value.split("/")
        for n, level in enumerate(levels):
            if ("+" in level and level != "+") or ("#" in level and (level != "#" or n < len(levels) - 1)):
                raise ValueError(f"{value!r} misuses a wildcard: + fills a whole level, # only the last one")
        if "\x00" in value:
            raise ValueError("must not contain NUL")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("must be a URL path without spaces, such as ws/valve/")
        return value.lstrip("/")  # routes match the path after its leading "/", as Django's do

    @model_validator(mode="after")
    def _route(self) -> Consumer:
        needs = {"mqtt": "topic", "websocket": "path"}.get(self.protocol)
        if needs is not None and not getattr(self, needs):
            raise ValueError(f"protocol {self.protocol!r} needs {needs}")
        for key in ("topic", "path"):
            if key != needs and getattr(self, key):
                raise ValueError(f"{key} is not for protocol {self.protocol!r}")
        return self

    @property
    def exact(self) -> bool:
        """An MQTT topic without wildcards: its device exists from start-up."""
        return "+" not in self.topic and "#" not in self.topic


class Worker(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str
    app: ImportPath

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        # A name as Channels takes it, and not a process-local one ("name!…").
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,99}", value):
            raise ValueError(f"{value!r} is not a channel name: 1 to 99 of A-Z a-z 0-9 _ . -")
        if value.startswith("gateway."):
            # Such as gateway.runtime.MQTT_OUT: a worker there would take the gateway's own messages.
            raise ValueError(f"{value!r}: channels named gateway.… are the gateway's own")
        return value


def check_extensions(consumers: list[Consumer], workers: list[Worker]) -> None:
    if sum(c.protocol == "telegram" for c in consumers) > 1:
        raise ValueError("consumers: one telegram entry at most (it replaces the chat consumer)")
    channels = [w.channel for w in workers]
    for channel in channels:
        if channels.count(channel) > 1:
            raise ValueError(f"workers: channel {channel!r} is given twice")
