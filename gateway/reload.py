"""What a reload (SIGHUP, `systemctl reload`) may change in a running process, and what needs a restart."""

from __future__ import annotations

from typing import Any

from gateway.config import Config

__all__ = ["RELOADABLE", "merge"]

# Applied at once; everything else is read at start-up only (ports, broker, database, bot).
RELOADABLE = (
    "sensors",
    "rules",  # a rule's modes and escalate steps too
    "schedules",
    "gateway.modes",
    "gateway.mode",  # the mode to start in: it changes the current mode only if that one is gone
    "gateway.timezone",
    "auth.tokens",
    "http.allowed_origins",
    "http.hosts",
    "http.trusted_proxies",
    "telegram.allowed_chats",
)


def merge(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The config to run after a reload, and the changed keys that need a restart (kept as they were)."""
    merged = new.model_copy(
        update={
            "gateway": old.gateway.model_copy(
                update={key: getattr(new.gateway, key) for key in ("modes", "mode", "timezone")}
            ),
            "mqtt": old.mqtt,
            # Its topics are subscribed at start-up, and what was found belongs to them.
            "discovery": old.discovery,
            # The router and the MQTT devices are made from them once, at start-up.
            "consumers": old.consumers,
            "workers": old.workers,
            "http": new.http.model_copy(update={"bind": old.http.bind}),
            "telegram": old.telegram.model_copy(update={"allowed_chats": new.telegram.allowed_chats}),
        }
    )
    return merged, sorted(_changed(old, new, merged))


def _changed(old: Config, new: Config, merged: Config) -> set[str]:
    keys: set[str] = set()
    for section in ("gateway", "http", "mqtt", "telegram", "discovery"):
        before: dict[str, Any] = getattr(old, section).model_dump()
        wanted: dict[str, Any] = getattr(new, section).model_dump()
        running: dict[str, Any] = getattr(merged, section).model_dump()
        keys |= {f"{section}.{k}" for k in wanted if wanted[k] != before.get(k) and running[k] != wanted[k]}
    keys |= {key for key in ("consumers", "workers") if getattr(old, key) != getattr(new, key)}
    return keys
