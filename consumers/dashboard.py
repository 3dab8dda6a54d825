"""`AlertSocket`: `/ws/alerts/` (README, Protocols): hello, alert and sensor events, ack, resume, ping,
and the site's silences and mode (SPEC §10)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from gateway.alerting import GROUP as SITE_GROUP
from gateway.alerting import ModeError, SilenceError
from gateway.engine.alerts import AckRefused
from gateway.engine.text import compact_json
from gateway.ops import logs, metrics
from gateway.runtime import Runtime
from protocols.dispatch import DirectDispatch
from protocols.ratelimit import TokenBucket
from protocols.websocket.types import FRAMES, FramesExtension

MAX_CLIENT_MESSAGE = 64 * 1024
RESUME_LIMIT = 1000
# How long a `resume` waits for its client to read what it was sent before dropping it as too slow.
RESUME_DRAIN_SECONDS = 30.0
CLOSE_UNAUTHORIZED = 4401
CLOSE_POLICY = 1008
# Per connection: a dashboard sends a few messages a minute; a burst of acks fits, a flood does not.
RATE, BURST = 20.0, 40.0
# A client that goes on flooding past this many dropped messages is closed.
FLOOD_CLOSE = 1000


_cap_log = logs.RateLimit(interval=10.0)


_sending: set[asyncio.Future[None]] = set()


# autobahn allows applications 1000 or 3000-4999 only: 1012 (service restart) becomes 4012.
CLOSE_SERVICE_RESTART = 4012
ALERT_EVENTS = frozenset(
    {
        "alert.raised",
        "alert.acknowledged",
        "alert.cleared",
        "alert.repeated",
        "alert.escalated",
        "alert.unsilenced",
    }
)
# The site's silences and mode (gateway.alerting): no seq, every socket gets them as they come.
SITE_EVENTS = frozenset({"site.silence", "site.mode"})


class Hub:
    """Every dashboard socket of this process, fed by one channel of the layer.

    One membership of "alerts" and "sensors" per process, not per socket: an event
    costs one channel-layer message here (one Redis message per process in split
    mode), its frame is built once, and each socket costs one transport write.
    A socket that is between its snapshot and its `hello`, or in a `resume`, holds
    what arrives until it is done, so nothing is missed and nothing comes twice.
    """

    GROUPS = ("alerts", "sensors", SITE_GROUP)

    def __init__(self) -> None:
        self.sockets: dict[AlertSocket, None] = {}  # insertion-ordered set
        metrics.websocket_connections.set_function(lambda: len(self.sockets))
        self._started: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._channel = ""
        self._layer: Any = None

    async def join(self, socket: AlertSocket) -> None:
        self.sockets[socket] = None
        started = self._started
        if started is None or (started.done() and (started.cancelled() or started.exception())):
            # The first socket, or the first since joining failed (the layer was away).
            self._started = started = asyncio.ensure_future(self._start(socket.runtime.layer))
        await asyncio.shield(started)

    def leave(self, socket: AlertSocket) -> None:
        self.sockets.pop(socket, None)

    async def _start(self, layer: Any) -> None:
        # The default prefix: channels_redis pops every process-local channel through one list
        # named by it, so a channel of another prefix waits forever while consumers receive.
        self._layer, self._channel = layer, await layer.new_channel()
        # The in-memory layer hands group messages over in the sender's call: no task wakes up.
        direct = getattr(layer, "listen", None) is not None and layer.listen(self._channel, self._take)
        for group in self.GROUPS:  # renewed by the layer (gateway.layers.redis.RedisLayer)
            await layer.group_add(group, self._channel)
        if not direct:
            self._task = asyncio.ensure_future(self._run(layer))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._layer is not None and hasattr(self._layer, "unlisten"):
            self._layer.unlisten(self._channel)

    async def _run(self, layer: Any) -> None:
        while True:
            try:
                message = await layer.receive(self._channel)
            except Exception:  # the Redis layer retries by itself; anything else is a bug to see
                logs.web.exception("dashboards: receiving from the channel layer failed; retrying")
                await asyncio.sleep(1.0)
                continue
            self._take(message)

    def _take(self, message: dict[str, Any]) -> None:
        try:
            self.deliver(message, self.sockets)
        except Exception:
            logs.web.exception("a %s event was not delivered to dashboards", message.get("type"))

    def deliver(self, message: dict[str, Any], sockets: Iterable[AlertSocket]) -> None:
        kind = message.get("type")
        if kind in ALERT_EVENTS:
            # An unsaved alert (the database failed) has seq 0 and always goes out.
            seq = message["seq"] if message.get("saved", True) else None
        elif kind in ("sensor.update", "sensor.list") or kind in SITE_EVENTS:
            seq = None
        else:
            return
        text: str = message["text"]
        prepared = None
        sent = 0
        for socket in list(sockets):
            if socket.held is not None:
                socket.held.append(message)
                continue
            if seq is not None and seq <= socket.since:
                continue  # in its hello already (it raced the snapshot), or a resume's to replay
            frames = socket.frames
            if frames is None:  # a server without the extension: through ASGI
                socket.spawn_send(text)
                sent += 1
                continue
            if prepared is None:  # any socket's extension prepares it for all of them
                prepared = frames.prepare(text)
            sent += frames.send(prepared)
        if kind in ALERT_EVENTS and sent:
            metrics.deliveries.labels("websocket", "ok").inc(sent)
            if "received" in message:
                metrics.latency.labels("websocket").observe(time.time() - message["received"])

    async def restart_all(self) -> None:
        """After a channel-layer outage: close every socket (4012), so clients reconnect and `resume`.

        Events sent while Redis was away never reached this process; a fresh socket and
        `resume` from the client's last seq bring them from the database, in order.
        """
        sockets = list(self.sockets)
        if sockets:
            logs.web.warning("closing %d WebSockets after the layer's outage: they resume", len(sockets))
        for socket in sockets:
            await socket.close(code=CLOSE_SERVICE_RESTART)


def hub_of(runtime: Runtime) -> Hub:
    if runtime.dashboards is None:
        runtime.dashboards = Hub()
    return runtime.dashboards  # type: ignore[no-any-return]


class AlertSocket(DirectDispatch, AsyncWebsocketConsumer):
    groups: list[str] = []  # the process's Hub is in the groups, not each socket
    hub: Hub | None = None  # set at connect; it holds the socket from join to close
    # The seq of its hello: events up to it are in the snapshot (or `resume` replays them),
    # every later one comes live, exactly once, whatever order the layer brings them in.
    since = 0
    who = ""
    bucket: TokenBucket | None = None  # made at the first message: most sockets never send one
    dropped = 0
    warned = 0.0
    # Events the Hub holds for this socket while it sends hello or a resume; None when live.
    held: list[dict[str, Any]] | None = None
    # The server's `gateway.frames` scope extension (docs/specs/websocket.md); None without it.
    frames: FramesExtension | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' consumer loop without a channel of its own: the process's Hub feeds the socket.

        Per socket that saves a layer channel and two receive tasks (one made per
        message), which is memory, and objects for every garbage collection to walk.
        """
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:  # not contextlib.suppress: its object would stay in an idle socket's frame
            pass
        finally:
            # However it ends (closed, failed, cancelled by daphne), its place in the Hub is freed.
            if self.hub is not None:
                self.hub.leave(self)

    async def connect(self) -> None:
        self.runtime: Runtime = self.scope["gateway"]
        config = self.runtime.config  # Host and Origin were checked before (gateway.web.security.refusal)
        hub = self.hub = hub_of(self.runtime)
        if len(hub.sockets) >= config.http.max_websockets:
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
        caller = await self.runtime.token_gate.identify(self.scope, config)
        if caller.who is None:
            if caller.throttled:
                await self.close()  # before accept: HTTP 403, and the token was not tried
                return
            if caller.via == "none":  # a token that was tried is counted by the gate
                metrics.bad_input.labels("websocket", "token").inc()
            # Accept and close at once, so a browser can read the 4401; no data is sent.
            await self.accept()
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.who = caller.who
        self.frames = (self.scope.get("extensions") or {}).get(FRAMES)
        # Join before the snapshot, holding events: those that race it are filtered by seq.
        self.held = []
        await hub.join(self)  # left in __call__'s finally, however the socket ends
        self.since, alerts = await self.runtime.book.snapshot()
        await self.accept()
        hello = {
            "type": "hello",
            "site": config.gateway.site,
            "seq": self.since,
            "alerts": alerts,
            "sensors": self.runtime.board.snapshot(recent=True),
            # After joining: a change that races this comes again live, and applying it twice is harmless.
            "silences": self.runtime.alerting.silences_json(),
            "mode": self.runtime.alerting.mode,
            "modes": self.runtime.alerting.modes,
        }
        await self.send(text_data=compact_json(hello))
        self._release()
        # The handshake's headers (the server drops its own reference once open): a KiB per socket.
        self.scope.pop("headers", None)

    def _release(self) -> None:
        held, self.held = self.held or [], None
        hub = self.hub
        assert hub is not None  # released only after join
        for message in held:
            hub.deliver(message, (self,))

    def spawn_send(self, text: str) -> None:
        task = asyncio.ensure_future(self.send(text_data=text))
        _sending.add(task)
        task.add_done_callback(_sending.discard)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.hub is None or self not in self.hub.sockets:
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
        elif kind == "silence":
            await self._silence(msg)
        elif kind == "unsilence":
            await self._unsilence(msg.get("silence"))
        elif kind == "mode":
            await self._mode(msg.get("mode"))
        else:
            await self._error(
                f"unknown message type {kind[:40]!r}; expected ack, resume, ping, silence, unsilence or mode"
            )

    async def _within_rate(self) -> bool:
        now = time.monotonic()
        if self.bucket is None:
            self.bucket = TokenBucket(RATE, BURST)
        if self.bucket.take(now):
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
            await self.send(text_data=compact_json({"type": "error", "error": error}))
        return False

    async def _error(self, error: str) -> None:
        metrics.bad_input.labels("websocket", "message").inc()
        await self.send(text_data=compact_json({"type": "error", "error": error}))

    async def _ack(self, alert_id: Any) -> None:
        if not isinstance(alert_id, str) or not alert_id or len(alert_id) > 32:
            return await self._error('ack needs "alert": the alert id')
        try:
            change = await self.runtime.book.acknowledge(alert_id, f"web:{self.who}")
        except AckRefused as err:
            return await self._error(str(err))
        logs.alerts.info("alert %s acknowledged by web:%s", change.alert["id"], self.who)
        await self.runtime.broadcast(change)

    @property
    def by(self) -> str:
        """`web:<token name>` (SPEC §10), or `web` alone when no tokens are set."""
        return f"web:{self.who}" if self.runtime.config.auth.tokens else "web"

    async def _silence(self, msg: dict[str, Any]) -> None:
        # The frame's "type" is not the silence's; every other key is, and a wrong one is refused.
        request = {key: value for key, value in msg.items() if key != "type"}
        try:
            await self.runtime.alerting.create_silence(request, self.by)
        except SilenceError as err:
            await self._error(f"silence: {err}")
        except Exception as err:  # the database: the socket stays, and the user hears of it
            await self._failed("silence", err)
        # The "created" event reaches every socket, this one too, through the group.

    async def _unsilence(self, silence_id: Any) -> None:
        if not isinstance(silence_id, str) or not silence_id:
            return await self._error('unsilence needs "silence": the silence id')
        try:
            ended = await self.runtime.alerting.end_silence(silence_id, self.by)
        except Exception as err:
            return await self._failed("unsilence", err)
        if ended is None:
            await self._error(f"unsilence: no active silence {silence_id[:40]!r}")

    async def _mode(self, mode: Any) -> None:
        try:
            await self.runtime.alerting.set_mode(mode, self.by)
        except ModeError as err:
            await self._error(f"mode: {err}")
        except Exception as err:
            await self._failed("mode", err)

    async def _failed(self, what: str, err: Exception) -> None:
        logs.web.error("%s from %s failed: %s", what, self.by, err)
        error = f"{what}: the gateway could not do it now; try again"
        await self.send(text_data=compact_json({"type": "error", "error": error}))

    async def _resume(self, after: Any) -> None:
        if type(after) is not int or after < 0:
            return await self._error('resume needs "after": the last seq seen, a whole number')
        # Up to the hello's seq: later events come live, and wait until the replay is out.
        self.held = self.held if self.held is not None else []
        try:
            for change in await self.runtime.book.events_after(after, RESUME_LIMIT, self.since):
                # Paced by the socket: written at once, a long replay looked like a client that
                # stopped reading, which was dropped, reconnected and resumed from the same seq.
                if self.frames is not None and not await self.frames.drained(RESUME_DRAIN_SECONDS):
                    return
                await self.send(text_data=change.text)
        finally:
            self._release()


class NotFoundSocket(DirectDispatch, AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.close()
