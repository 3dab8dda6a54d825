"""`AlertSocket`: `/ws/alerts/` as SPEC §7 describes it: hello, alert and sensor events, ack, resume, ping."""

from __future__ import annotations

import json
import time
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from gateway import logs, metrics
from gateway.alerts import AckRefused
from gateway.auth import origin_allowed, scope_owner
from gateway.runtime import Runtime

MAX_CLIENT_MESSAGE = 64 * 1024
RESUME_LIMIT = 1000
CLOSE_UNAUTHORIZED = 4401


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


class AlertSocket(AsyncWebsocketConsumer):
    groups: list[str] = []  # joined by hand after auth, not by the base class
    counted = False
    last_seq = 0
    who = ""

    async def connect(self) -> None:
        self.runtime: Runtime = self.scope["gateway"]
        config = self.runtime.config
        if not origin_allowed(self.scope, config.http.allowed_origins):
            metrics.bad_input.labels("websocket", "origin").inc()
            logs.web.warning("refused a WebSocket from origin %s", dict(self.scope["headers"]).get(b"origin"))
            await self.close()  # before accept: HTTP 403 at the handshake
            return
        who = scope_owner(self.scope, config.auth.tokens)
        if who is None:
            metrics.bad_input.labels("websocket", "token").inc()
            # Accept and close at once, so a browser can read the 4401; no data is sent.
            await self.accept()
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.who = who
        # Join before the snapshot: events that race it are filtered by seq below.
        for group in ("alerts", "sensors"):
            await self.channel_layer.group_add(group, self.channel_name)
        self.last_seq, alerts = await self.runtime.book.snapshot()
        await self.accept()
        self.counted = True
        metrics.websocket_connections.inc()
        hello = {
            "type": "hello",
            "site": config.gateway.site,
            "seq": self.last_seq,
            "alerts": alerts,
            "sensors": self.runtime.board.snapshot(recent=True),
        }
        await self.send(text_data=_dumps(hello))

    async def disconnect(self, code: int) -> None:
        if self.counted:
            self.counted = False
            metrics.websocket_connections.dec()
            for group in ("alerts", "sensors"):
                await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.counted:
            return
        if text_data is None:
            return await self._error("binary frames are not supported; send JSON text")
        if len(text_data) > MAX_CLIENT_MESSAGE:
            return await self._error(f"message over {MAX_CLIENT_MESSAGE} bytes")
        try:
            msg = json.loads(text_data)
        except (ValueError, RecursionError):
            return await self._error("message is not valid JSON")
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            return await self._error('message must be a JSON object with a "type"')
        kind = msg["type"]
        if kind == "ping":
            await self.send(text_data='{"type":"pong"}')
        elif kind == "ack":
            await self._ack(msg.get("alert"))
        elif kind == "resume":
            await self._resume(msg.get("after"))
        else:
            await self._error(f"unknown message type {kind[:40]!r}; expected ack, resume or ping")

    async def _error(self, error: str) -> None:
        metrics.bad_input.labels("websocket", "message").inc()
        await self.send(text_data=_dumps({"type": "error", "error": error}))

    async def _ack(self, alert_id: Any) -> None:
        if not isinstance(alert_id, str) or not alert_id or len(alert_id) > 32:
            return await self._error('ack needs "alert": the alert id')
        try:
            change = await self.runtime.book.acknowledge(alert_id, f"web:{self.who}")
        except AckRefused as err:
            return await self._error(str(err))
        logs.alerts.info("alert %s acknowledged by web:%s", change.alert["id"], self.who)
        await self.runtime.broadcast(change)

    async def _resume(self, after: Any) -> None:
        if type(after) is not int or after < 0:
            return await self._error('resume needs "after": the last seq seen, a whole number')
        for change in await self.runtime.book.events_after(after, RESUME_LIMIT):
            await self.send(text_data=change.text)
            self.last_seq = max(self.last_seq, change.seq)

    # Channel-layer events

    async def alert_raised(self, event: dict[str, Any]) -> None:
        # One event may come through several groups, and may race hello or resume.
        if event["seq"] <= self.last_seq:
            return
        self.last_seq = event["seq"]
        await self.send(text_data=event["text"])
        metrics.deliveries.labels("websocket", "ok").inc()
        if "received" in event:
            metrics.latency.labels("websocket").observe(time.time() - event["received"])

    alert_acknowledged = alert_cleared = alert_repeated = alert_raised

    async def sensor_update(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


class NotFoundSocket(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.close()
