"""`Runtime`: what the consumers of one process share: config, alert book, sensor board, health.

It travels in every scope as `scope["gateway"]` (see `gateway.asgi.WithRuntime`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from gateway.alerting import SiteAlerting
from gateway.config import Config, Sensor
from gateway.engine.alerts import AlertChange, AlertRecord
from gateway.engine.discovery import DiscoveredSensors
from gateway.engine.rules import SensorRules
from gateway.engine.text import compact_json
from gateway.faults import FAULT_RULE, DeviceFaults
from gateway.layers.peers import PeerMirror
from gateway.ops import logs, metrics
from gateway.ops.health import Health
from gateway.store.alerts import AlertBook
from gateway.store.chats import ChatBook
from gateway.store.history import HistoryStore
from gateway.store.models import SensorState
from gateway.store.sensors import SensorStore

if TYPE_CHECKING:  # made by the web room's owner (gateway.server): the runtime sits below the web
    from gateway.web.auth import TokenGate

# The channel of `gateway/<site>/alerts`: one MQTT process takes each event (consumers.site).
MQTT_OUT = "gateway.mqtt-alerts"
# Discovery across processes (split mode): the MQTT processes' discovery consumers are in DISCOVERY
# and say what they found (`sensors.discovered`) to DISCOVERED, which processes without MQTT follow.
DISCOVERY = "discovery"
DISCOVERED = "discovered"
_handover_log = logs.RateLimit(interval=10.0)


@dataclass(eq=False)
class SensorEngine:
    """A sensor's rule state, held here and not by its application instance: an instance that
    fails is started again (protocols.mqtt.devices) and goes on where the last one was."""

    rules: SensorRules
    # rule id -> (alert, saved) last raised: what a clear refers to if the database is away
    announced: dict[str, tuple[dict[str, Any], bool]] = field(default_factory=dict)
    # Alert changes are stored in the order their readings came, across a restart too: each
    # task takes this lock in the order the tasks were made, and asyncio's lock is FIFO.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Those tasks made and not done: with none, a message's changes are stored without a task.
    applying: int = 0
    # rule id -> its active alert's escalation: [alert id, since (loop time), steps fired]
    escalating: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class Runtime:
    config: Config
    health: Health
    book: AlertBook = field(init=False)
    board: SensorStore = field(init=False)
    # Numeric readings per minute (SPEC §11 history): written by the processes that receive them.
    history: HistoryStore = field(init=False)
    chats: ChatBook = field(init=False)
    # The Telegram server of this process, if it runs one (the webhook view feeds it).
    telegram: Any = None
    # The dashboard sockets of this process (consumers.dashboard.Hub), made by the first one.
    dashboards: Any = None
    # Called after a reload has replaced `config` (sensor consumers rebuild their rules).
    reload_listeners: set[Callable[[], None]] = field(default_factory=set)
    # sensor id -> {rule id: acknowledged}, read once at start-up for the rule engines.
    open_rules: dict[str, dict[str, bool]] = field(default_factory=dict)
    # Whether alert events go to MQTT_OUT: a process with MQTT reads it, or one elsewhere on Redis.
    mqtt_out: bool = False
    # Who a request or socket is, with the brake on wrong tokens per client address.
    token_gate: TokenGate = field(kw_only=True)
    # The other MQTT processes of a shared subscription, if this process is one of them.
    peers: PeerMirror | None = None
    # sensor id -> its rule engine, made by its consumer's first instance (consumers.sensor).
    engines: dict[str, SensorEngine] = field(default_factory=dict)
    faults: DeviceFaults = field(init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    # sensor id -> its active alerts as stored at start-up (escalation timers), taken by its consumer
    escalating: dict[str, list[AlertRecord]] = field(default_factory=dict)
    # The site's silences and mode (SPEC §10), kept current in every process.
    alerting: SiteAlerting = field(init=False)
    # What discovery found (consumers.discovery), and how it is applied: the server runs the
    # configured sensors and these together (gateway.server), as a reload would.
    discovered: DiscoveredSensors = field(default_factory=DiscoveredSensors)
    apply_discovered: Callable[[], Awaitable[None]] = field(default=lambda: asyncio.sleep(0))

    def __post_init__(self) -> None:
        self.book = _book(self.config)
        self.board = SensorStore(self.config.gateway.site, self.config.sensors)
        self.history = HistoryStore(self.config.gateway.site, self.config.history.keep)
        self.chats = ChatBook(self.config.gateway.site)
        self.faults = DeviceFaults(self)
        self.alerting = SiteAlerting(self)

    async def load(self) -> None:
        await self.book.start()  # the alert journal replayed into the database first (if there is one)
        await self.board.load()
        self.open_rules = await self.book.open_rules()
        self.faults.open.update(s for s, rules in self.open_rules.items() if FAULT_RULE in rules)
        await self.alerting.load()
        # sensor id -> its active alerts, for their escalation timers (consumers.sensor)
        self.escalating = {}
        for alert in await self.book.escalating():
            self.escalating.setdefault(alert.sensor, []).append(alert)

    async def stored_sensors(self, ids: list[str]) -> list[SensorState]:
        """The stored state of sensors that came after start-up (discovered), for `restore_sensors`."""
        return await database_sync_to_async(_stored)(self.board.site, ids)

    def restore_sensors(self, rows: list[SensorState]) -> None:
        """Their stored state on the board, as configured sensors have theirs at start-up (once
        they are configured, before their consumers start)."""
        for row in rows:
            snap = self.board.sensors.get(row.sensor)
            if snap is not None and snap.updated_at is None:  # no reading since it came
                snap.value, snap.online, snap.updated_at = row.value, row.online, row.updated_at
                if row.updated_at is not None:
                    snap.remember(row.value, row.updated_at)

    def reload(self, config: Config) -> None:
        """Run with a new config (already merged: see gateway.reload) from now on."""
        before = set(self.board.sensors)
        self.config = config
        self.board.configure(config.sensors)
        self.history.keep = config.history.keep
        self.alerting.reconfigure()
        for listener in list(self.reload_listeners):
            listener()
        if set(self.board.sensors) != before:
            # Sensors came or went (a reload, discovery): open dashboards get the new list.
            sensors = self.board.snapshot()
            text = compact_json({"type": "sensors", "sensors": sensors})
            message = {"type": "sensor.list", "sensors": sensors, "text": text}
            task = asyncio.ensure_future(self.hand_over(self.layer.group_send, "sensors", message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @property
    def layer(self) -> Any:
        return get_channel_layer()

    async def follow_sensors(self) -> None:
        """In a process without MQTT (split mode): keep the board current from the `sensors` group.

        Dashboards get their first picture (and charts) from this board in `hello`.
        """
        layer = self.layer
        channel = await layer.new_channel()
        await layer.group_add("sensors", channel)  # renewed by the layer (gateway.layers.redis.RedisLayer)
        # The MQTT processes' discovered sensors: each says them at every change and when asked.
        await layer.group_add(DISCOVERED, channel)
        if self.config.discovery.enabled:
            await self.hand_over(layer.group_send, DISCOVERY, {"type": "discovery.request"})
        while True:
            message = await layer.receive(channel)
            if message.get("type") == "sensors.discovered":
                await self._mirror_discovered(message)
                continue
            if message.get("type") != "sensor.update":
                continue
            try:
                self.board.apply(message["sensor"])
                self._heard(message["sensor"]["id"])
            except (KeyError, TypeError, ValueError) as err:
                logs.sensors.warning("ignored a malformed sensor event: %s", err)

    async def _mirror_discovered(self, message: dict[str, Any]) -> None:
        try:
            sensors = [Sensor.model_validate(s) for s in message["sensors"]]
        except (KeyError, TypeError, ValueError) as err:  # pydantic's ValidationError is a ValueError
            logs.sensors.warning("ignored a malformed discovered-sensors event: %s", str(err)[:200])
            return
        if self.discovered.mirror(sensors):
            await self.apply_discovered()

    def _heard(self, sensor_id: str) -> None:
        # Shown in this process's history until the MQTT process has written its minute.
        snap = self.board.sensors.get(sensor_id)
        if snap is not None and snap.updated_at is not None:
            self.history.record(sensor_id, snap.value, snap.updated_at.timestamp(), own=False)

    async def broadcast(self, change: AlertChange, received: float | None = None) -> None:
        """Hand an alert change to every group it belongs to, encoded once.

        `received`: the wall-clock time its MQTT trigger arrived, so that every
        protocol can report trigger-to-delivery latency, in whatever process it runs.
        """
        message: dict[str, Any] = {
            "type": f"alert.{change.event}",
            "seq": change.seq,
            "alert": change.alert,
            "text": change.text,
            "saved": change.saved,
        }
        if received is not None:
            message["received"] = received
        layer = self.layer
        for group in change.groups:
            await self.hand_over(layer.group_send, group, message)
        if self.mqtt_out:
            # One MQTT process publishes it, however many run: they take turns on this channel.
            await self.hand_over(layer.send, MQTT_OUT, message)
        metrics.alerts.labels(change.event).inc()  # counted once told, not on its way

    async def hand_over(self, send: Callable[..., Any], name: str, message: dict[str, Any]) -> None:
        # The alert is stored: a layer that is full or away costs this delivery, not the consumer.
        try:
            await send(name, message)
        except Exception as err:
            metrics.deliveries.labels("layer", "failed").inc()
            allowed, held = _handover_log.allow(name)
            if allowed:
                logs.layer.error(
                    "%s %s not handed to %s: %s (%d more not logged)",
                    message["type"],
                    message.get("seq", ""),
                    name,
                    err,
                    held,
                )


def _book(config: Config) -> AlertBook:
    """The journaled book when this is the only process (in-memory layer), the plain one otherwise."""
    gateway = config.gateway
    if gateway.channel_layer != "memory" or not gateway.journal:
        return AlertBook(gateway.site)
    from gateway.store.journal import JournaledBook, journal_path

    return JournaledBook(gateway.site, journal_path(gateway.state_dir, gateway.site), gateway.journal_fsync)


def _stored(site: str, ids: list[str]) -> list[SensorState]:
    return list(SensorState.objects.filter(site=site, sensor__in=ids))
