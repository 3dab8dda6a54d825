"""`SiteAlerting`: the site's silences and arming mode, live in every process (SPEC §10).

The database holds them (gateway.store.silences); each process keeps them in memory, so a
raise asks "is this silenced?" without a query. A change made here is stored, applied here
at once, and announced on the channel-layer group `site` (dashboards, Telegram, MQTT and the
other processes hear it there). Timers end silences on time and switch modes by schedule;
the database decides which process acts on an end or a switch, so it is done once.

What a silence or a mode means for an alert is the engine's (gateway.engine.silences,
gateway.engine.rules, gateway.engine.escalation); the sensor consumers apply it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from gateway.engine.alerts import iso, new_id
from gateway.engine.policy import ModeError
from gateway.engine.schedules import Switch, last_switch, next_switch
from gateway.engine.silences import MAX_SILENCE, Silence, SilenceError, parse_silence, silencing
from gateway.engine.text import compact_json
from gateway.ops import logs, metrics
from gateway.store.silences import SilenceBook

if TYPE_CHECKING:
    from gateway.runtime import Runtime

__all__ = ["GROUP", "ModeError", "SilenceError", "SiteAlerting"]

# Every process's follower and dashboard hub, and whoever else announces these changes.
GROUP = "site"
READY_WAIT = 10.0
log = logs.alerts


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class SiteAlerting:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store = SilenceBook(runtime.config.gateway.site)
        # id -> silence in effect (or whose end this process has not dealt with yet)
        self.silences: dict[str, Silence] = {}
        self.json: dict[str, dict[str, Any]] = {}  # id -> the silence object as stored
        self.mode = runtime.config.gateway.mode
        self.changed_by: str | None = None
        self.changed_at: str | None = None
        # Called with "mode" or "silences" after a change here (sensor consumers re-evaluate).
        self.listeners: set[Callable[[str], None]] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self._switch: asyncio.TimerHandle | None = None
        self.next_switch: dict[str, Any] | None = None  # {"mode", "at"}: the schedules' next switch
        self._tasks: set[asyncio.Task[Any]] = set()
        # Set once the protocol servers are up (gateway.server): an end or a switch due at start-up
        # waits for it, so the sensors' consumers are there to run the actions it brings.
        self.servers_ready = asyncio.Event()
        metrics.silences_active.set_function(lambda: len(self.silences))

    # State

    @property
    def modes(self) -> list[str]:
        return list(self.runtime.config.gateway.modes)

    def silencing(self, labels: dict[str, str], now: float | None = None) -> str | None:
        """The id of the silence in effect over an alert with these labels, or None."""
        if not self.silences:
            return None
        return silencing(self.silences.values(), labels, time.time() if now is None else now)

    def silences_json(self) -> list[dict[str, Any]]:
        """The silences in effect, oldest first (SPEC silence objects)."""
        now = time.time()
        return [self.json[sid] for sid, s in self.silences.items() if s.ends_at > now and sid in self.json]

    def mode_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "modes": self.modes,
            "changed_by": self.changed_by,
            "changed_at": self.changed_at,
            "next_switch": self.next_switch,
        }

    # Start-up

    async def load(self) -> None:
        """The silences not ended and the mode, as stored; a schedule's switch missed while stopped."""
        for row in await self.store.running():
            self._keep(row)
        stored = await self.store.mode()
        if stored is not None and stored["mode"] in self.modes:
            self.mode, self.changed_by, self.changed_at = (
                stored["mode"],
                stored["changed_by"],
                stored["changed_at"],
            )
        missed = self._missed_switch(stored)
        if missed is not None:
            at, switch = missed
            log.info(
                "mode %s: the schedule switched to it at %s while the gateway was stopped", switch.mode, at
            )
            await self._store_mode(switch.mode, "schedule", at.timestamp(), once=True)

    def _missed_switch(self, stored: dict[str, Any] | None) -> tuple[datetime, Switch] | None:
        switches = self._switches()
        if not switches or stored is None or stored["changed_at"] is None:
            return (
                None  # the first start: the configured `mode`; the schedules take over from their next switch
            )
        return last_switch(switches, self._zone(), _moment(_epoch(stored["changed_at"])), datetime.now(UTC))

    def _switches(self) -> list[Switch]:
        if not self.modes:
            return []
        return [Switch.of(s) for s in self.runtime.config.schedules]

    def _zone(self) -> Any:
        name = self.runtime.config.gateway.timezone
        return ZoneInfo(name) if name else datetime.now().astimezone().tzinfo

    async def follow(self) -> None:
        """Join the group `site` now (before the servers start: no change another process makes
        once this one is up is missed), and follow it from now on."""
        layer = self.runtime.layer
        channel = await layer.new_channel()
        try:
            await layer.group_add(GROUP, channel)  # renewed by the layer (gateway.layers.redis.RedisLayer)
        except Exception as err:  # the layer is away: the membership is made when it is back
            log.warning("could not join the group %s yet (%s)", GROUP, err)
            self._spawn(self._join_later(channel))
        self._spawn(self._follow(channel))

    async def _join_later(self, channel: str) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.runtime.layer.group_add(GROUP, channel)
                return
            except Exception:
                continue

    def start(self) -> None:
        """Timers for silence ends and schedule switches (the follower runs from `follow`)."""
        self._arm_expiry()
        self._arm_switch()

    def stop(self) -> None:
        for handle in (self._expiry, self._switch):
            if handle is not None:
                handle.cancel()
        for task in list(self._tasks):
            task.cancel()

    def reconfigure(self) -> None:
        """A reload: modes or schedules may have changed."""
        if self.modes and self.mode not in self.modes:
            gone, self.mode = self.mode, self.runtime.config.gateway.mode
            log.info("mode %s: the reloaded config has no mode %r", self.mode, gone)
            self._notify("mode")
        elif not self.modes and self.mode:
            self.mode = ""
            self._notify("mode")
        self._arm_switch()

    # Silences

    async def create_silence(self, request: Any, by: str) -> dict[str, Any]:
        """A new silence from a request (`{"zone": "kitchen", "for": "2h"}`); SilenceError if bad."""
        now = time.time()
        silence = parse_silence(request, id=new_id(), created_by=by, now=now)
        row = await self.store.create(
            silence.matchers, silence.comment or "", by, _moment(now), _moment(silence.ends_at)
        )
        self._keep(row)
        covered = await self.runtime.book.cover(row["id"], silence.matchers)
        log.info(
            "silence %s created by %s until %s over %s%s",
            row["id"],
            by,
            row["ends_at"],
            silence.matchers,
            f" ({covered} open alerts)" if covered else "",
        )
        await self._announce_silence("created", row)
        return row

    async def end_silence(self, silence_id: Any, by: str) -> dict[str, Any] | None:
        """End a silence early; None when no silence with that id is in effect."""
        if not isinstance(silence_id, str) or not silence_id.strip() or len(silence_id) > 16:
            return None
        row = await self.store.end(silence_id, by, _moment(time.time()))
        if row is None:
            return None
        log.info("silence %s removed by %s", row["id"], by)
        await self._ended(row)
        return row

    async def _ended(self, row: dict[str, Any]) -> None:
        self._drop(row["id"])
        changes = await self.runtime.book.release(row["id"], self.silencing)
        await self._announce_silence("ended", row)
        for change in changes:
            await self.runtime.broadcast(change)
            log.info("alert %s unsilenced: %s", change.alert["id"], change.alert["message"])

    def _keep(self, row: dict[str, Any]) -> None:
        if row["id"] in self.silences:
            return
        silence = Silence(
            id=row["id"],
            sensor=row["sensor"],
            zone=row["zone"],
            rule=row["rule"],
            severity=row["severity"],
            comment=row["comment"],
            created_by=row["created_by"],
            created_at=_epoch(row["created_at"]),
            ends_at=_epoch(row["ends_at"]),
        )
        self.silences[silence.id] = silence
        self.json[silence.id] = row
        self._arm_expiry()
        self._notify("silences")

    def _drop(self, silence_id: str) -> None:
        if self.silences.pop(silence_id, None) is not None:
            self.json.pop(silence_id, None)
            self._arm_expiry()
            self._notify("silences")

    def _arm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if not self.silences:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # loading, before the loop serves: start() arms it
        end = min(s.ends_at for s in self.silences.values())
        # At most a week ahead (MAX_SILENCE); the loop's clock and the wall clock agree here.
        wait = min(max(0.0, end - time.time()), MAX_SILENCE)
        self._expiry = loop.call_later(wait, lambda: self._spawn(self._expire()))

    async def _up(self) -> None:
        if not self.servers_ready.is_set():
            with contextlib.suppress(TimeoutError):  # a broker that is away does not keep silences on
                await asyncio.wait_for(self.servers_ready.wait(), READY_WAIT)

    async def _expire(self) -> None:
        await self._up()
        now = time.time()
        for silence in [s for s in self.silences.values() if s.ends_at <= now]:
            try:
                row = await self.store.end(silence.id, "expired", _moment(silence.ends_at))
            except Exception as err:
                log.error("silence %s: could not mark it ended (%s); trying again in 5 s", silence.id, err)
                asyncio.get_running_loop().call_later(5.0, lambda: self._spawn(self._expire()))
                return
            if row is None:  # another process ended it, or it was removed: it is over here too
                self._drop(silence.id)
                continue
            log.info("silence %s ended (its time is up)", silence.id)
            await self._ended(row)

    async def _announce_silence(self, event: str, row: dict[str, Any]) -> None:
        text = compact_json({"type": "silence", "event": event, "silence": row})
        message = {"type": "site.silence", "event": event, "silence": row, "text": text}
        await self.runtime.hand_over(self.runtime.layer.group_send, GROUP, message)

    # Modes

    async def set_mode(self, mode: Any, by: str) -> dict[str, Any]:
        """Switch the site's mode; ModeError (listing the known ones) for an unknown one."""
        if not self.modes:
            raise ModeError("modes are off: set gateway.modes in the config")
        if not isinstance(mode, str) or mode not in self.modes:
            raise ModeError(f"unknown mode {str(mode)[:40]!r} (known: {', '.join(self.modes)})")
        await self._store_mode(mode, by, time.time())
        return self.mode_json()

    async def _store_mode(self, mode: str, by: str, at: float, once: bool = False) -> None:
        stored = await self.store.set_mode(mode, by, _moment(at), once)
        if stored is None:
            return  # a schedule's switch that another process made: its announcement comes here too
        self._apply_mode(stored)
        log.info("mode %s set by %s", mode, by)
        text = compact_json({"type": "mode", **self.mode_json()})
        await self.runtime.hand_over(
            self.runtime.layer.group_send,
            GROUP,
            {"type": "site.mode", "mode": self.mode_json(), "text": text},
        )

    def _apply_mode(self, stored: dict[str, Any]) -> None:
        changed = stored["mode"] != self.mode
        self.mode, self.changed_by, self.changed_at = (
            stored["mode"],
            stored["changed_by"],
            stored["changed_at"],
        )
        if changed:
            self._notify("mode")

    def _arm_switch(self) -> None:
        if self._switch is not None:
            self._switch.cancel()
            self._switch = None
        self.next_switch = None
        switches = self._switches()
        if not switches:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        upcoming = next_switch(switches, self._zone(), datetime.now(UTC))
        if upcoming is None:
            return
        at, switch = upcoming
        self.next_switch = {"mode": switch.mode, "at": iso(at)}
        log.info("schedule: next switch to %s at %s", switch.mode, at.astimezone(self._zone()).isoformat())
        wait = max(0.0, at.timestamp() - time.time())
        self._switch = loop.call_later(wait, lambda: self._spawn(self._scheduled(switch, at.timestamp())))

    async def _scheduled(self, switch: Switch, at: float) -> None:
        self._switch = None
        await self._up()
        if time.time() < at:  # woke early (the wall clock moved): wait for the moment itself
            self._arm_switch()
            return
        try:
            if switch.mode != self.mode:
                await self._store_mode(switch.mode, "schedule", at, once=True)
        except Exception as err:
            log.error("schedule: could not switch to %s (%s)", switch.mode, err)
        self._arm_switch()

    # Other processes' changes (and this one's, which change nothing here the second time)

    async def _follow(self, channel: str) -> None:
        layer = self.runtime.layer
        while True:
            try:
                message = await layer.receive(channel)
                if message.get("type") == "site.silence":
                    if message["event"] == "created":
                        self._keep(message["silence"])
                    else:
                        self._drop(message["silence"]["id"])
                elif message.get("type") == "site.mode":
                    self._apply_mode(message["mode"])
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("ignored a site event that could not be applied: %s", err)
                await asyncio.sleep(1.0)

    def _notify(self, what: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(what)
            except Exception:
                log.exception("a %s listener failed", what)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
