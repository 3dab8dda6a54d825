"""`ChatConsumer`: the gateway's bot (the worked example of docs/specs/telegram.md), one instance per chat.

It joins the channel-layer groups the chat subscribed to ("alerts", "alerts.<zone>")
and turns alert events into messages with an Acknowledge button; acknowledging
and clearing edit that message. Each chat remembers in the database the last
alert event it dealt with (`TelegramChat.seq`) and the message of each alert
(`TelegramMessage`), so that a restart or a poller failover catches up on what
was missed without sending anything twice.

An alert the outbox had no room for stays owed: the chat's `seq` stays before
it, and the chat catches up from there a little later (and after a restart).
Only allowed chats are registered, join groups and get alerts; a chat found no
longer allowed (a reload ends its instance; every alert checks again) loses its
subscriptions, as a chat that is gone does.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

from consumers.telegram_manage import ManageCommands, acknowledged_by
from gateway.engine.alerts import AckRefused, AlertChange
from gateway.ops import logs, metrics
from gateway.runtime import Runtime
from protocols.telegram import button
from protocols.telegram.types import (
    TelegramCallbackQueryEvent,
    TelegramChatGoneEvent,
    TelegramChatMigratedEvent,
    TelegramMessageEvent,
    TelegramSendFailedEvent,
    TelegramSentEvent,
    User,
)

log = logs.telegram

COMMANDS = [
    ("start", "Show this chat's id and whether it may subscribe"),
    ("help", "List the commands"),
    ("subscribe", "Get alerts: /subscribe for every zone, /subscribe <zone> for one"),
    ("unsubscribe", "Stop alerts: /unsubscribe for all, /unsubscribe <zone> for one"),
    ("status", "Open alerts and the state of each sensor"),
    ("ack", "Acknowledge an alert: /ack <id>"),
    ("mute", "Silence alerts: /mute <sensor|zone|alert id> <duration> [comment]"),
    ("unmute", "End silences: /unmute <silence id|sensor|zone>"),
    ("silences", "List the active silences"),
    ("mode", "Show the site's mode, or set it: /mode [name]"),
]
# Events that send a new message about an alert (the others edit the one it has).
NEW_MESSAGE = ("raised", "repeated", "unsilenced", "escalated")
CATCH_UP_LIMIT = 500
OWED_RETRY = 5.0  # seconds before an alert the outbox had no room for is tried again
_retrying: set[asyncio.Task[None]] = set()  # the retries' hand-overs, kept until done
SEVERITY_MARK = {"critical": "🔴", "warning": "🟠", "info": "🔵"}


def _when(stamp: str | None) -> str:
    if not stamp:
        return "?"
    moment = datetime.fromisoformat(stamp).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")


class ChatConsumer(ManageCommands):
    groups_joined: set[str] = set()

    async def telegram_connect(self, event: Any) -> None:
        self.runtime: Runtime = self.scope["gateway"]
        self.site = self.runtime.config.gateway.site
        self.chats = self.runtime.chats
        self.groups_joined = set()
        self.last_seq = 0
        self.sending: dict[int, str] = {}  # seq -> alert id, of messages on their way
        self.triggered: dict[str, float] = {}  # alert id -> when its MQTT trigger arrived, while sending
        self.pending_edit: dict[str, tuple[int, dict[str, Any]]] = {}
        self.owed_from: int | None = None  # the first alert event the outbox had no room for
        self.owed_retry: asyncio.TimerHandle | None = None
        self.site_joined, self.made = False, set()
        if not self.allowed:
            return  # a stranger's instance ends once answered: nothing of it is kept
        seq = await self.chats.register(self.scope["chat"])
        for group in sorted(await self.chats.groups(self.chat_id)):
            await self._join(group)
        if self.groups_joined:
            await self._catch_up(seq)

    @property
    def allowed(self) -> bool:
        return self.chats.allowed(self.chat_id, self.runtime.config.telegram.allowed_chats)

    def _upto(self, seq: int) -> int:
        """How far the chat's `seq` may advance: never past an alert still owed to it, nor past one
        on its way (the outbox may still refuse it, after later events were handled)."""
        held = [*self.sending, *(() if self.owed_from is None else (self.owed_from,))]
        return min(seq, min(held) - 1) if held else seq

    async def _advance(self, seq: int) -> None:
        await self.chats.advance(self.chat_id, self._upto(seq))

    async def _join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined.add(group)
        await self.follow_site()

    async def _leave(self, group: str) -> None:
        await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined.discard(group)
        await self.follow_site()

    async def _catch_up(self, seq: int) -> None:
        """Alert events since this chat's `seq` that concern it: those raised while nobody polled."""
        changes = await self.runtime.book.events_after(seq, CATCH_UP_LIMIT)
        mine = [c for c in changes if self._concerns(c.event, c.alert)]
        if mine:
            log.info("chat %s: catching up on %d alert events", self.chat_id, len(mine))
        for change in mine:
            await self._on_alert(change.event, change.seq, change.alert)
        if changes and not mine:
            await self._advance(changes[-1].seq)

    def _concerns(self, kind: str, alert: dict[str, Any]) -> bool:
        """Whether the chat hears this event: by the groups it went to (config's rule as of now)."""
        if kind == "escalated":
            return bool(self._step_groups(alert) & self.groups_joined)
        rule = self._rule(alert)
        groups = {"alerts", f"alerts.{alert['zone']}", *(rule.notify if rule else ())}
        if rule is not None:  # an escalated alert's later events go to its steps' groups too
            for step in rule.escalate[: alert.get("escalation") or 0]:
                groups.update(step.notify)
        return bool(groups & self.groups_joined)

    def _rule(self, alert: dict[str, Any]) -> Any:
        return next((r for r in self.runtime.config.rules if r.id == alert["rule"]), None)

    def _step_groups(self, alert: dict[str, Any]) -> set[str]:
        """The `notify` groups of the escalation step an alert is at: who an `escalated` is for."""
        rule, level = self._rule(alert), alert.get("escalation") or 0
        if rule is None or not 1 <= level <= len(rule.escalate):
            return set()
        return set(rule.escalate[level - 1].notify)

    # Alerts from the channel layer

    async def alert_raised(self, event: dict[str, Any]) -> None:
        if not event.get("saved", True):
            return  # the database refused it: nowhere to record the message; dashboards show it
        if not self.allowed:
            await self._no_longer_allowed()
            return
        kind = event["type"].removeprefix("alert.")
        await self._on_alert(kind, event["seq"], event["alert"], event.get("received"))

    alert_acknowledged = alert_cleared = alert_repeated = alert_raised
    alert_unsilenced = alert_escalated = alert_raised

    async def _on_alert(
        self, kind: str, seq: int, alert: dict[str, Any], received: float | None = None
    ) -> None:
        if seq <= self.last_seq:
            return  # the same event through a second group, or already caught up
        self.last_seq = seq
        alert_id = alert["id"]
        ref = _ref(seq, alert_id, alert["state"])
        if kind in NEW_MESSAGE:
            if alert.get("silenced") or (
                kind == "escalated" and not self._step_groups(alert) & self.groups_joined
            ):
                await self._advance(seq)  # nobody is told of a silenced alert; an escalation, its steps'
                return
            # An unsilenced or escalated alert gets a message of its own, marked with its seq.
            shown = "active" if kind in ("raised", "repeated") else f"#{seq}"
            if (kind == "raised" and alert_id in self.sending.values()) or seq in self.sending:
                return
            if kind != "repeated":
                known = await self.chats.message(alert_id, self.chat_id)
                if known is not None and (kind == "raised" or known[1] == shown):
                    await self._advance(seq)  # sent before a restart
                    return
            self.sending[seq] = alert_id
            if received is not None and kind == "raised":
                self.triggered[alert_id] = received
            await self.send_message(
                self.render(alert, kind), self._buttons(alert), ref=_ref(seq, alert_id, shown)
            )
            return
        if alert_id in self.sending.values():
            self.pending_edit[alert_id] = (seq, alert)  # edited once the message is out
            return
        known = await self.chats.message(alert_id, self.chat_id)
        if known is None or known[1] == alert["state"]:
            await self._advance(seq)
            return
        await self.edit_message(known[0], self.render(alert, kind), self._buttons(alert), ref=ref)

    def _buttons(self, alert: dict[str, Any]) -> list[list[Any]] | None:
        if alert["state"] != "active":
            return None
        return [[button("✅ Acknowledge", f"ack:{alert['id']}"), button("🔕 Mute 1h", f"mute:{alert['id']}")]]

    def render(self, alert: dict[str, Any], kind: str = "raised") -> str:
        sensor = self.runtime.config.sensors_by_id.get(alert["sensor"])
        name = sensor.name if sensor else alert["sensor"]
        mark = SEVERITY_MARK.get(alert["severity"], "⚪")
        head = f"{mark} {alert['severity'].upper()}: {alert['message']}"
        if kind == "repeated":
            head = f"🔁 Still active. {head}"
        elif kind == "unsilenced":
            head = f"🔔 No longer muted, still active. {head}"
        elif kind == "escalated":
            head = f"⏫ Escalated (level {alert.get('escalation')}): {head}"
        lines = [
            head,
            f"Sensor: {name} ({alert['sensor']}), zone {alert['zone']}",
            f"Raised: {_when(alert['raised_at'])}",
            f"Alert id: {alert['id']}   (/ack {alert['id']})",
        ]
        if alert["acknowledged_at"]:
            lines.append(
                f"✅ Acknowledged by {alert['acknowledged_by']} at {_when(alert['acknowledged_at'])}"
            )
        if alert["cleared_at"]:
            lines.append(f"☑️ Cleared at {_when(alert['cleared_at'])}")
        return "\n".join(lines)

    async def telegram_sent(self, event: TelegramSentEvent) -> None:
        seq, alert_id, state = _unref(event["ref"])
        self.sending.pop(seq, None)
        received = self.triggered.pop(alert_id, None)
        if received is not None:
            metrics.latency.labels("telegram").observe(time.time() - received)
        await self.chats.remember(alert_id, self.chat_id, event["message_id"], state, self._upto(seq))
        if alert_id in self.sending.values():
            return  # a later message about it is on its way: the edit waits for that one
        pending = self.pending_edit.pop(alert_id, None)
        if pending is not None:
            pending_seq, alert = pending
            await self.edit_message(
                event["message_id"],
                self.render(alert, "edit"),
                self._buttons(alert),
                ref=_ref(pending_seq, alert_id, alert["state"]),
            )

    async def telegram_send_failed(self, event: TelegramSendFailedEvent) -> None:
        if event["ref"]:
            seq, alert_id, _ = _unref(event["ref"])
            self.sending.pop(seq, None)
            self.triggered.pop(alert_id, None)
            if alert_id not in self.sending.values():
                self.pending_edit.pop(alert_id, None)
            if not event["permanent"]:
                await self._owe(seq)
                return
            await self._advance(seq)

    async def _owe(self, seq: int) -> None:
        first = self.owed_from is None
        self.owed_from = seq if self.owed_from is None else min(self.owed_from, seq)
        if first:
            # Through the channel layer to itself, so that the retry runs between this chat's events.
            self.owed_retry = asyncio.get_running_loop().call_later(OWED_RETRY, self._retry_owed)

    def _retry_owed(self) -> None:
        self.owed_retry = None
        task = asyncio.ensure_future(self.channel_layer.send(self.channel_name, {"type": "alert.owed"}))
        _retrying.add(task)
        task.add_done_callback(_retrying.discard)

    async def alert_owed(self, event: dict[str, Any]) -> None:
        if self.owed_from is None:
            return
        seq, self.owed_from = self.owed_from - 1, None
        self.last_seq = min(self.last_seq, seq)
        log.info("chat %s: sending the alerts the Telegram queue had no room for", self.chat_id)
        await self._catch_up(seq)

    async def telegram_chat_migrated(self, event: TelegramChatMigratedEvent) -> None:
        old = dict(self.scope["chat"])
        await super().telegram_chat_migrated(event)
        groups = await self.chats.migrate(old, self.chat_id)
        log.warning(
            "chat %s was upgraded to the supergroup %s: its subscriptions (%s) and its allowance moved "
            "there; put %s in telegram.allowed_chats in place of %s",
            old["id"],
            self.chat_id,
            ", ".join(groups) or "none",
            self.chat_id,
            old["id"],
        )

    async def telegram_chat_gone(self, event: TelegramChatGoneEvent) -> None:
        await self._drop_subscriptions(f"can no longer be reached ({event['reason']})")

    async def _no_longer_allowed(self) -> None:
        # Taken off telegram.allowed_chats by a reload: listed again, it subscribes afresh, no backlog.
        if self.groups_joined:
            await self._drop_subscriptions("is no longer in telegram.allowed_chats")

    async def _drop_subscriptions(self, why: str) -> None:
        removed = await self.chats.unsubscribe(self.chat_id, None)
        for group in list(self.groups_joined):
            await self._leave(group)
        log.warning(
            "chat %s %s: removed its subscriptions %s", self.chat_id, why, ", ".join(removed) or "(none)"
        )

    # Commands

    async def refuse(self) -> None:
        await self.reply(
            f"This chat is not allowed to use this gateway. Its chat id is {self.chat_id}: "
            f"ask the administrator to add it to telegram.allowed_chats."
        )

    async def command_start(self, event: TelegramMessageEvent) -> None:
        state = (
            "This chat is allowed: send /subscribe to get alerts."
            if self.allowed
            else "This chat is not allowed yet: ask the administrator to add it to telegram.allowed_chats."
        )
        await self.reply(
            f"Alert gateway of site {self.site}.\nThis chat's id is {self.chat_id}.\n{state}\n"
            "/help lists the commands."
        )

    async def command_help(self, event: TelegramMessageEvent) -> None:
        await self.reply("\n".join(f"/{name}: {text}" for name, text in COMMANDS))

    async def command_subscribe(self, event: TelegramMessageEvent) -> None:
        if not self.allowed:
            await self.refuse()
            return
        group, meaning = self._group_for(event["args"])
        if group is None:
            await self.reply(meaning)
            return
        seq = await self.runtime.book.seq()
        if await self.chats.subscribe(self.chat_id, group, seq):
            self.last_seq = max(self.last_seq, seq)
            await self._join(group)
            log.info("chat %s subscribed to %s", self.chat_id, group)
            await self.reply(f"Subscribed: this chat gets the alerts of {meaning}.")
        else:
            await self.reply(f"Already subscribed to the alerts of {meaning}.")

    async def command_unsubscribe(self, event: TelegramMessageEvent) -> None:
        if event["args"]:
            group, meaning = self._group_for(event["args"], self.groups_joined)
            if group is None:
                await self.reply(meaning)
                return
            removed = await self.chats.unsubscribe(self.chat_id, group)
        else:
            removed = await self.chats.unsubscribe(self.chat_id, None)
        for name in removed:
            await self._leave(name)
        if removed:
            log.info("chat %s unsubscribed from %s", self.chat_id, ", ".join(removed))
            left = sorted(self.groups_joined)
            tail = f" Still subscribed: {', '.join(left)}." if left else " No more alerts here."
            await self.reply(f"Unsubscribed from {', '.join(removed)}.{tail}")
        else:
            await self.reply("This chat had no such subscription.")

    async def command_status(self, event: TelegramMessageEvent) -> None:
        if not self.allowed:
            await self.refuse()
            return
        alerts = await self.runtime.book.open_alerts()
        if "mqtt" not in self.runtime.health.enabled:
            # Split mode: the sensors live in the MQTT process; read what it last saved.
            await self.runtime.board.load()
        lines = [f"Site {self.site}: {len(alerts)} open alert{'s' if len(alerts) != 1 else ''}."]
        for alert in alerts[:30]:
            mark = SEVERITY_MARK.get(alert["severity"], "⚪")
            state = (
                f"acknowledged by {alert['acknowledged_by']}"
                if alert["state"] == "acknowledged"
                else "active"
            )
            lines.append(
                f"{mark} {alert['id']} {alert['message']} ({state}, since {_when(alert['raised_at'])})"
            )
        lines.append("Sensors:")
        for sensor in self.runtime.board.snapshot():
            online = {True: "online", False: "OFFLINE", None: "no data yet"}[sensor["online"]]
            value = "-" if sensor["value"] is None else str(sensor["value"])
            lines.append(f"• {sensor['name']} ({sensor['zone']}): {value}, {online}")
        subs = sorted(self.groups_joined)
        lines.append(f"This chat is subscribed to: {', '.join(subs) if subs else 'nothing'}.")
        await self.reply(_clip("\n".join(lines)))

    async def command_ack(self, event: TelegramMessageEvent) -> None:
        if not self.allowed:
            await self.refuse()
            return
        if not event["args"]:
            await self.reply("Usage: /ack <alert id>, e.g. /ack k3x9pq")
            return
        await self.reply(await self._acknowledge(event["args"][0], event["from"]))

    async def _acknowledge(self, alert_id: str, user: User | None) -> str:
        by = acknowledged_by(user)
        try:
            change: AlertChange = await self.runtime.book.acknowledge(alert_id[:32], by)
        except AckRefused as err:
            return str(err).capitalize()
        logs.alerts.info("alert %s acknowledged by %s", change.alert["id"], by)
        await self.runtime.broadcast(change)
        return f"Acknowledged alert {change.alert['id']}."

    async def unknown_command(self, event: TelegramMessageEvent) -> None:
        await self.reply(f"Unknown command /{event['command']}. /help lists the commands.")

    async def text_message(self, event: TelegramMessageEvent) -> None:
        if self.scope["chat"]["type"] == "private":
            await self.reply("I understand commands only: /help lists them.")

    async def telegram_callback_query(self, event: TelegramCallbackQueryEvent) -> None:
        action, _, alert_id = event["data"].partition(":")
        if action not in ("ack", "mute") or not alert_id:
            await self.answer_callback(event["id"], "Unknown button.")
            return
        verb = "acknowledge" if action == "ack" else "mute"
        if not self.allowed:
            await self.answer_callback(
                event["id"], f"This chat (id {self.chat_id}) may not {verb} alerts.", alert=True
            )
            return
        if action == "mute":
            answer = await self.mute_alert(alert_id, event["from"])
        else:
            answer = await self._acknowledge(alert_id, event["from"])
        await self.answer_callback(event["id"], answer[:200])

    async def telegram_disconnect(self, event: Any) -> None:
        retry = getattr(self, "owed_retry", None)
        if event["final"] and retry is not None:
            retry.cancel()  # what is owed is in the database: the next instance catches up
        if not self.allowed:
            await self._no_longer_allowed()
        for group in list(self.groups_joined):
            await self._leave(group)
        await super().telegram_disconnect(event)


def _ref(seq: int, alert_id: str, state: str) -> str:
    """What a send carries so that its outcome can be recorded: `<seq>:<alert id>:<state shown>`."""
    return f"{seq}:{alert_id}:{state}"


def _unref(ref: str) -> tuple[int, str, str]:
    seq, alert_id, state = ref.split(":", 2)
    return int(seq), alert_id, state


def _clip(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else text[: limit - 2] + "\n…"
