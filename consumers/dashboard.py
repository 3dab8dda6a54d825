"""`AlertSocket`: `/ws/alerts/` as SPEC §7 describes it: hello, alert and sensor events, ack, resume, ping."""

from __future__ import annotations

import json
import time
import weakref
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from gateway import logs, metrics
from gateway.alerts import AckRefused
from gateway.auth import origin_allowed, scope_owner
from gateway.runtime import Runtime
from protocols.dispatch import DirectDispatch

MAX_CLIENT_MESSAGE = 64 * 1024
RESUME_LIMIT = 1000
CLOSE_UNAUTHORIZED = 4401
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013
# Per connection: a dashboard sends a few messages a minute; a burst of acks fits, a flood does not.
RATE, BURST = 20.0, 40.0
# A client that goes on flooding past this many dropped messages is closed.
FLOOD_CLOSE = 1000


_cap_log = logs.RateLimit(interval=10.0)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


# autobahn allows applications 1000 or 3000-4999 only: 1012 (service restart) becomes 4012.
CLOSE_SERVICE_RESTART = 4012
# Every open dashboard socket of this process, for `restart_all`.
_open_sockets: weakref.WeakSet[AlertSocket] = weakref.WeakSet()


async def restart_all() -> None:
    """After a channel-layer outage: close every socket (4012), so clients reconnect and `resume`.

    Events sent while Redis was away never reached this process; a fresh socket and
    `resume` from the client's last seq bring them from the database, in order.
    """
    sockets = list(_open_sockets)
    if sockets:
        logs.web.warning("closing %d WebSockets after the channel-layer outage: they resume", len(sockets))
    for socket in sockets:
        await socket.close(code=CLOSE_SERVICE_RESTART)


class AlertSocket(DirectDispatch, AsyncWebsocketConsumer):
    groups: list[str] = []  # joined by hand after auth, not by the base class
    counted = False
    last_seq = 0
    who = ""
    tokens = BURST
    refilled = 0.0
    dropped = 0
    warned = 0.0

    async def connect(self) -> None:
        self.runtime: Runtime = self.scope["gateway"]
        config = self.runtime.config
        if not origin_allowed(self.scope, config.http.allowed_origins):
            metrics.bad_input.labels("websocket", "origin").inc()
            logs.web.warning("refused a WebSocket from origin %s", dict(self.scope["headers"]).get(b"origin"))
            await self.close()  # before accept: HTTP 403 at the handshake
            return
        if metrics.websocket_connections._value.get() >= config.http.max_websockets:
            metrics.bad_input.labels("websocket", "connection_cap").inc()
            allowed, held = _cap_log.allow("cap")
            if allowed:
                logs.web.warning(
                    "refused a WebSocket: %d open, http.max_websockets reached (%d more not logged)",
                    config.http.max_websockets,
                    held,
                )
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
        _open_sockets.add(self)
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
        if not await self._within_rate():
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

    async def _within_rate(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.refilled) * RATE)
        self.refilled = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.dropped += 1
        metrics.bad_input.labels("websocket", "rate").inc()
        if self.dropped >= FLOOD_CLOSE:
            logs.web.warning(
                "closed a WebSocket of %s: it kept flooding (%d dropped)", self.who, self.dropped
            )
            await self.close(code=CLOSE_POLICY)
        elif now - self.warned >= 1.0:
            self.warned = now
            error = f"too many messages: at most {RATE:.0f} a second; the rest are dropped"
            await self.send(text_data=_dumps({"type": "error", "error": error}))
        return False

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
        if event.get("saved", True):
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


class NotFoundSocket(DirectDispatch, AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.close()
