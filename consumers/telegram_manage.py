"""Alert management from Telegram (SPEC §10), a part of `consumers.telegram.ChatConsumer`.

`/mute`, `/unmute`, `/silences`, `/mode`, the "Mute 1h" button, the names `/subscribe`
takes (zones and the `notify` groups of rules and escalation steps), and the one-line
announcements of silence and mode changes: a chat subscribed to every zone (`alerts`)
also joins the group `site` and hears each change there, except the changes it made
itself (it got the reply already).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.alerting import GROUP as SITE_GROUP
from gateway.alerting import ModeError, SilenceError
from gateway.ops import logs, metrics
from protocols.telegram import TelegramConsumer
from protocols.telegram.types import TelegramMessageEvent, User

if TYPE_CHECKING:
    from gateway.runtime import Runtime

__all__ = ["ManageCommands", "acknowledged_by", "describe", "span", "until"]

log = logs.telegram

MUTE_USAGE = "Usage: /mute <sensor|zone|alert id> <duration> [comment], e.g. /mute cellar 2h painting"
UNMUTE_USAGE = "Usage: /unmute <silence id|sensor|zone>, e.g. /unmute k3x9pq"
MUTE_BUTTON_FOR = "1h"
MATCHER_ORDER = ("zone", "sensor", "rule", "severity")


def acknowledged_by(user: User | None) -> str:
    """Who did something from Telegram, as `acknowledged_by` and a silence's `created_by` name it."""
    if user is None:
        return "telegram"
    return f"telegram:@{user['username']}" if user.get("username") else f"telegram:{user['id']}"


def _moment(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC)


def until(stamp: str) -> str:
    """`14:05 UTC` today (UTC), `2026-12-08 14:05 UTC` another day."""
    moment = _moment(stamp)
    if moment.date() == datetime.now(UTC).date():
        return moment.strftime("%H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def span(seconds: float) -> str:
    """2h, 1h 30m, 45s, 7d."""
    left = max(0, round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts) or "0s"


def describe(silence: dict[str, Any]) -> str:
    """What a silence covers: `zone cellar`, `sensor front-door, rule door-opened`."""
    return ", ".join(f"{key} {silence[key]}" for key in MATCHER_ORDER if silence.get(key))


def _length(silence: dict[str, Any]) -> str:
    return span((_moment(silence["ends_at"]) - _moment(silence["created_at"])).total_seconds())


def _sentence(err: Exception) -> str:
    text = str(err)
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


class ManageCommands(TelegramConsumer):
    """The alert-management commands and announcements; ChatConsumer sets these attributes."""

    runtime: Runtime
    groups_joined: set[str]
    site_joined: bool
    made: set[tuple[str, str]]  # (event, key) of the changes this chat made: not announced to it

    if TYPE_CHECKING:

        @property
        def allowed(self) -> bool: ...

        async def refuse(self) -> None: ...

    # Subscription names

    def valid_groups(self) -> dict[str, str]:
        """Every group a chat may subscribe to -> what it means to a person."""
        config = self.runtime.config
        groups = {"alerts": "every zone"}
        for zone in sorted({s.zone for s in config.sensors}):
            groups[f"alerts.{zone}"] = f"zone {zone}"
        for rule in config.rules:
            for group in [*rule.notify, *(g for step in rule.escalate for g in step.notify)]:
                groups.setdefault(group, f"group {group.removeprefix('alerts.')}")
        return groups

    def _group_for(self, args: list[str], joined: set[str] | None = None) -> tuple[str | None, str]:
        """(group, what it means to a person), or (None, an error). `joined`: names also accepted."""
        if not args:
            return "alerts", "every zone"
        name = args[0]
        group = name if name == "alerts" or name.startswith("alerts.") else f"alerts.{name}"
        valid = self.valid_groups()
        if group in valid:
            return group, valid[group]
        if joined is not None and group in joined:
            return group, f"group {name}"
        zones = [g.removeprefix("alerts.") for g, m in valid.items() if m.startswith("zone ")]
        others = [g.removeprefix("alerts.") for g, m in valid.items() if m.startswith("group ")]
        return None, (
            f"Unknown zone or group {name[:40]!r}. Zones: {', '.join(zones) or '(none configured)'}."
            + (f" Groups: {', '.join(others)}." if others else "")
        )

    # Announcements of silence and mode changes, on the group `site`

    async def follow_site(self) -> None:
        """In the group `site` while subscribed to every zone, out of it otherwise."""
        want = "alerts" in self.groups_joined
        if want and not self.site_joined:
            await self.channel_layer.group_add(SITE_GROUP, self.channel_name)
            self.site_joined = True
        elif not want and self.site_joined:
            await self.channel_layer.group_discard(SITE_GROUP, self.channel_name)
            self.site_joined = False
            self.made.clear()

    def _made(self, event: str, key: str | None) -> None:
        if self.site_joined and key:
            self.made.add((event, key))

    def _own(self, event: str, key: Any) -> bool:
        if (event, key) in self.made:
            self.made.discard((event, key))
            return True
        return False

    async def site_silence(self, event: dict[str, Any]) -> None:
        silence = event["silence"]
        if self._own(event["event"], silence["id"]) or not self.site_joined or not self.allowed:
            return
        if event["event"] == "created":
            text = (
                f"🔕 {silence['created_by']} muted {describe(silence)} for {_length(silence)}, "
                f"until {until(silence['ends_at'])} (silence {silence['id']})"
            )
            if silence.get("comment"):
                text += f": {silence['comment']}"
        else:
            over = _moment(silence["ends_at"]) <= datetime.now(UTC)
            text = (
                f"🔔 Silence {silence['id']} over {describe(silence)} "
                f"{'ended: its time was up' if over else 'was removed'}."
            )
        await self.send_message(text[:4000], silent=True)

    async def site_mode(self, event: dict[str, Any]) -> None:
        mode = event["mode"]
        if self._own("mode", mode.get("changed_at")) or not self.site_joined or not self.allowed:
            return
        by = mode.get("changed_by")
        await self.send_message(
            f"🛡 Mode is now {mode['mode']}" + (f" (set by {by})." if by else "."), silent=True
        )

    # Commands

    async def _bad(self, command: str, text: str) -> None:
        metrics.bad_input.labels("telegram", command).inc()
        log.info("chat %s: /%s refused: %s", self.chat_id, command, text.splitlines()[0])
        await self.reply(text)

    async def _open_alert(self, alert_id: str) -> dict[str, Any] | None:
        wanted = alert_id.strip().lower()[:32]
        return next((a for a in await self.runtime.book.open_alerts() if a["id"] == wanted), None)

    async def _target(self, name: str) -> dict[str, str] | None:
        """The matchers of `/mute <name>`: a sensor, a zone, or an open alert's rule on its sensor."""
        config = self.runtime.config
        if name in config.sensors_by_id:
            return {"sensor": name}
        if name in {s.zone for s in config.sensors}:
            return {"zone": name}
        alert = await self._open_alert(name)
        if alert is not None:
            return {"sensor": alert["sensor"], "rule": alert["rule"]}
        return None

    async def command_mute(self, event: TelegramMessageEvent) -> None:
        if not self.allowed:
            await self.refuse()
            return
        args = event["args"]
        if len(args) < 2:
            await self._bad("mute", MUTE_USAGE)
            return
        target = await self._target(args[0])
        if target is None:
            await self._bad("mute", f"No sensor, zone or open alert {args[0][:40]!r}.\n{MUTE_USAGE}")
            return
        request: dict[str, Any] = {**target, "for": args[1]}
        if len(args) > 2:
            request["comment"] = " ".join(args[2:])
        await self.reply(await self._silence(request, event["from"], "mute"))

    async def mute_alert(self, alert_id: str, user: User | None) -> str:
        """The "Mute 1h" button: the alert's rule on its sensor, for an hour; the answer."""
        alert = await self._open_alert(alert_id)
        if alert is None:
            return f"Alert {alert_id[:32]} is no longer open."
        request = {"sensor": alert["sensor"], "rule": alert["rule"], "for": MUTE_BUTTON_FOR}
        return await self._silence(request, user, "mute_button")

    async def _silence(self, request: dict[str, Any], user: User | None, command: str) -> str:
        try:
            silence = await self.runtime.alerting.create_silence(request, acknowledged_by(user))
        except SilenceError as err:
            metrics.bad_input.labels("telegram", command).inc()
            return f"{_sentence(err)}\n{MUTE_USAGE}"
        self._made("created", silence["id"])
        return (
            f"🔕 Muted {describe(silence)} for {_length(silence)}, until {until(silence['ends_at'])}. "
            f"Silence id {silence['id']} (/unmute {silence['id']})"
        )

    async def command_unmute(self, event: TelegramMessageEvent) -> None:
        if not self.allowed:
            await self.refuse()
            return
        if not event["args"]:
            await self._bad("unmute", UNMUTE_USAGE)
            return
        name = event["args"][0][:40]
        active = self.runtime.alerting.silences_json()
        ids = [s["id"] for s in active if s["id"] == name.lower()]
        ids = ids or [s["id"] for s in active if name in (s["sensor"], s["zone"])]
        if not ids:
            alert = await self._open_alert(name)
            if alert is not None and alert.get("silenced") in {s["id"] for s in active}:
                ids = [alert["silenced"]]
        ended = []
        for silence_id in ids:
            self._made("ended", silence_id)
            row = await self.runtime.alerting.end_silence(silence_id, acknowledged_by(event["from"]))
            if row is None:
                self.made.discard(("ended", silence_id))  # ended meanwhile: announced without us
            else:
                ended.append(f"{row['id']} ({describe(row)})")
        if not ended:
            await self._bad("unmute", f"No active silence for {name!r}.\n{UNMUTE_USAGE}")
            return
        await self.reply(_clip(f"🔔 Unmuted: {', '.join(ended)}."))

    async def command_silences(self, event: TelegramMessageEvent) -> None:
        if not self.allowed:
            await self.refuse()
            return
        active = self.runtime.alerting.silences_json()
        if not active:
            await self.reply("No active silences.")
            return
        lines = [f"{len(active)} active silence{'s' if len(active) != 1 else ''}:"]
        for s in active:
            line = f"🔕 {s['id']}: {describe(s)}, until {until(s['ends_at'])}, by {s['created_by']}"
            lines.append(line + (f": {s['comment']}" if s.get("comment") else ""))
        lines.append("/unmute <id> ends one.")
        await self.reply(_clip("\n".join(lines)))

    async def command_mode(self, event: TelegramMessageEvent) -> None:
        if not self.allowed:
            await self.refuse()
            return
        alerting = self.runtime.alerting
        modes = alerting.modes
        if not modes:
            await self.reply("Modes are off: set gateway.modes in the config.")
            return
        usage = f"Usage: /mode [{'|'.join(modes)}]"
        if not event["args"]:
            now = alerting.mode_json()
            by = f", set by {now['changed_by']} at {until(now['changed_at'])}" if now["changed_at"] else ""
            await self.reply(f"Mode: {now['mode']}{by}.\nModes: {', '.join(modes)}.\n{usage}")
            return
        try:
            now = await alerting.set_mode(event["args"][0], acknowledged_by(event["from"]))
        except ModeError as err:
            await self._bad("mode", f"{_sentence(err)}\n{usage}")
            return
        self._made("mode", now["changed_at"])
        await self.reply(f"🛡 Mode is now {now['mode']}.")


def _clip(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else text[: limit - 2] + "\n…"
