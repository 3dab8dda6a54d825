"""`Gateway`: starts the protocol servers of this process on one event loop and stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

from gateway.config import Config
from gateway.ops import logs, ports
from gateway.ops.health import Health
from gateway.ops.notify import Notifier, watchdog_interval

log = logs.server

PROTOCOLS = ("web", "mqtt", "telegram", "worker")
DRAIN_SECONDS = 8.0
# A protocol down this long stops the watchdog pings, so systemd restarts the process. Long,
# because most outages are outside (broker, internet) where a restart mends nothing and costs
# every dashboard a reconnect; what it does mend is a client wedged inside this process.
WATCHDOG_DOWN_LIMIT = 600.0
# READY=1 waits for Telegram at most this long after the rest is up: a box that boots without
# internet must not fail its start (TimeoutStartSec) and lose MQTT and the dashboard with it.
TELEGRAM_READY_WAIT = 60.0
# How often STATUS= is refreshed when systemd asks for no watchdog pings.
STATUS_SECONDS = 15.0
# How stale the alert count in STATUS= may get: one COUNT query per period, off the ping's path.
COUNT_SECONDS = 10.0


def usable(config: Config, protocols: Iterable[str]) -> list[str]:
    """Those of `protocols` the config gives work to: Telegram needs a bot token, a worker [[workers]]."""
    work = {"telegram": config.telegram_enabled, "worker": bool(config.workers)}
    return [p for p in protocols if work.get(p, True)]


def event_loop(protocols: list[str]) -> asyncio.AbstractEventLoop:
    """daphne's loop when this process serves HTTP (Twisted must share it), else a plain one."""
    if "web" in protocols:
        without_pyopenssl()
        from protocols._twisted import reactor_loop

        loop = reactor_loop()  # daphne's import installs Twisted's asyncio reactor
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def without_pyopenssl() -> None:
    """Keep pyOpenSSL (and cryptography's X.509 with it) out of this process: 5 MiB of RSS.

    daphne listens on plain TCP here (TLS ends at a proxy in front, see docs/deploy.md), yet
    Twisted and autobahn import pyOpenSSL whenever it is installed (twisted[tls], pulled in by
    daphne) for TLS they would never use. Made unimportable before they look, both take the
    no-TLS path they have for an install without it. Nothing else here needs pyOpenSSL: paho,
    aiohttp (Telegram), redis-py and amqtt use the standard `ssl` module.
    """
    if "OpenSSL" not in sys.modules:
        sys.modules["OpenSSL"] = None  # type: ignore[assignment] # import OpenSSL -> ImportError


def mqtt_devices(config: Config) -> list[Any]:
    from consumers.site import ack_topic
    from gateway.asgi import consumer_devices
    from protocols.mqtt.server import Device

    devices = [Device(s.id, s.topics) for s in config.sensors]
    devices.append(Device(f"site:{config.gateway.site}", (ack_topic(config.gateway.site),)))
    devices += [Device(name, (topic,)) for name, topic in consumer_devices(config).items()]
    return devices


# CPython collects generation 0 every 700 net allocations of containers; reference counting
# frees nearly everything here, the collector only finds cycles. Rarer passes (see settle_heap).
GC_THRESHOLDS = (20_000, 20, 10)


def settle_heap() -> None:
    """Take what start-up made (modules, classes, settings) out of the garbage collector's walks.

    Those objects live until exit, yet every full collection walked all of them: with
    1,000 dashboards open, full passes took 50-200 ms and were the p99 of an alert's
    fan-out. Frozen, and with passes rarer (`GC_THRESHOLDS`), they stop being that.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # And the C heap's free pages back to the system (glibc's malloc_trim): start-up frees memory
    # that glibc keeps (modules compiled without .pyc, the migration check, the config): 1.1 MiB.
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# File descriptors a web process needs besides its WebSockets and half-open connections:
# the listener, the database, the MQTT and Redis connections, the broker's clients, logs.
DESCRIPTORS_BESIDES = 256


def descriptors(needed: int) -> None:
    """Raise the soft limit on open files to `needed` where the hard one allows; warn if it cannot.

    Past the limit every new connection fails (accept: EMFILE), dashboards and health checks alike.
    Under systemd the unit's LimitNOFILE sets it (and @resources is filtered: no raising there).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < needed:
        log.warning(
            "open files are limited to %d, but http.max_websockets and http.max_half_open need about %d: "
            "raise the limit (LimitNOFILE= in the unit, ulimit -n) or lower them",
            soft,
            needed,
        )


class Gateway:
    def __init__(self, config: Config, protocols: list[str], env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.protocols = usable(config, protocols)
        self.health = Health(self.protocols)
        self.stop = asyncio.Event()
        self.started = time.monotonic()
        self.ready = asyncio.Event()
        self.web: Any = None
        self.mqtt: Any = None
        self.broker: Any = None
        self.telegram: Any = None
        self.runtime: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        # systemd's side: what NOTIFY_SOCKET and WATCHDOG_USEC ask of this process (nothing outside systemd).
        env = os.environ if env is None else env
        self.notifier = Notifier(env.get("NOTIFY_SOCKET"))
        self.watchdog = watchdog_interval(env, os.getpid())
        self.debug_stall = _debug_stall_seconds(env)
        self._announcer: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._telegram_settled = False
        self._systemd: asyncio.Task[None] | None = None
        self._notified_ready = False
        self._wake = asyncio.Event()
        self.health.listeners.add(self._wake.set)
        self._alerts: dict[str, int] | None = None
        self._counting: asyncio.Task[None] | None = None
        self._counted_at = float("-inf")

    def _signals(self) -> None:
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if self.stop.is_set():
                log.warning("second %s: exiting now", signal.Signals(signum).name)
                os._exit(1)
            log.info("%s: draining", signal.Signals(signum).name)
            self.stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        if self.debug_stall is not None:
            loop.add_signal_handler(signal.SIGUSR2, self._stall, self.debug_stall)

    def _stall(self, seconds: float) -> None:
        # Test hook only (GATEWAY_DEBUG_STALL_SIGNAL=1): block the loop as a wedged callback would.
        log.warning("SIGUSR2: stalling the event loop for %.1fs (GATEWAY_DEBUG_STALL_SIGNAL)", seconds)
        time.sleep(seconds)

    async def reload(self) -> bool:
        """Re-read the config file; a bad one is refused and the running config stays."""
        # systemd shows "reloading" until READY=1 again; before the first READY=1 it is still starting.
        reloading = self._notified_ready
        if reloading:
            self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            return self._reload()
        finally:
            if reloading:
                self.notifier.send("READY=1", f"STATUS={self._status()}")

    def _reload(self) -> bool:
        from gateway.config import ConfigError, load_config
        from gateway.reload import merge

        source = self.config.source
        try:
            new = load_config(None if source == "built-in defaults" else source)
        except ConfigError as err:
            log.error("reload refused, the running config stays: %s", err)
            return False
        merged, needs_restart = merge(self.config, new)
        self.config = merged
        if self.runtime is not None:
            self.runtime.reload(merged)
        if self.mqtt is not None:
            self.mqtt.update_devices(mqtt_devices(merged))
        log.info(
            "config reloaded from %s: %d sensors, %d rules", source, len(merged.sensors), len(merged.rules)
        )
        if needs_restart:
            log.warning("not applied until a restart: %s", ", ".join(needs_restart))
        return True

    async def run(self) -> None:
        from gateway.asgi import build_application
        from gateway.runtime import Runtime
        from gateway.web.auth import TokenGate

        self._signals()
        config = self.config
        runtime = self.runtime = Runtime(config, self.health, token_gate=TokenGate())
        from gateway.redis_url import is_redis

        runtime.mqtt_out = "mqtt" in self.protocols or is_redis(config.gateway.channel_layer)
        await runtime.load()
        application = build_application(runtime)
        try:
            if self.notifier.enabled:
                self._systemd = asyncio.ensure_future(self._notify_systemd())
            if "mqtt" in self.protocols:
                await self._start_peers(runtime)
                await self._start_mqtt(application)
            if "web" in self.protocols:
                from gateway.web.views import gate
                from protocols.websocket.http_guard import Guard
                from protocols.websocket.server import WebServer

                http = config.http
                descriptors(http.max_websockets + http.max_half_open + DESCRIPTORS_BESIDES)
                self.web = WebServer(
                    application,
                    http.host,
                    http.port,
                    send_buffer=http.websocket_send_buffer,
                    guard=Guard(gate(runtime), http.max_half_open, http.request_timeout),
                )
                await ports.web(config).start(self.web.start)
                self.health.set("web", True)
                from channels.layers import get_channel_layer

                from consumers.dashboard import hub_of

                layer = get_channel_layer()
                if hasattr(layer, "recovered"):
                    layer.recovered.append(hub_of(runtime).restart_all)
            if "web" in self.protocols and "mqtt" not in self.protocols:
                # Split mode: sensor readings come from the MQTT processes over the channel layer.
                self._follower = asyncio.ensure_future(runtime.follow_sensors())
            if "telegram" in self.protocols:
                self._start_telegram(application, runtime)
            if "worker" in self.protocols:
                from protocols.worker import WorkerServer

                up = partial(self.health.set, "worker")
                worker = WorkerServer(
                    application, [w.channel for w in config.workers], runtime.layer, on_state=up
                )
                self._tasks.append(asyncio.ensure_future(worker.serve(self.stop)))
            self._announcer = asyncio.ensure_future(self._announce_ready())
            await self.stop.wait()
        finally:
            self.stop.set()
            self._stop_reporting()
            await self._shutdown(runtime)
            self.notifier.close()

    async def _start_peers(self, runtime: Any) -> None:
        """Shared subscriptions: in the peers' group before the first message (gateway.layers.peers)."""
        from channels.layers import get_channel_layer

        from gateway.layers.peers import PeerMirror

        layer = get_channel_layer()
        if self.config.mqtt.shared_group and layer is not None:
            runtime.peers = PeerMirror(layer)
            await runtime.peers.start()

    async def _start_mqtt(self, application: Any) -> None:
        from gateway.asgi import consumer_filters
        from protocols.mqtt.client import BrokerAddress
        from protocols.mqtt.server import MqttServer, MqttSettings

        config = self.config
        if config.mqtt.url == "embedded":
            from protocols.mqtt.broker import EmbeddedBroker

            listener = ports.embedded_broker(config)
            host, port = listener.host, listener.port
            self.broker = EmbeddedBroker(host, port)
            await listener.start(self.broker.start)
            address = BrokerAddress(listener.local_host, port)
            protocol = "3.1.1"  # amqtt speaks 3.1.1 only: skip the MQTT 5 attempt
        else:
            address = BrokerAddress.from_url(config.mqtt.url)
            protocol = config.mqtt.protocol
        settings = MqttSettings(
            address=address,
            client_id=config.mqtt.client_id,
            protocol=protocol,
            status_topic=f"gateway/{config.gateway.site}/status",
            shared_group=config.mqtt.shared_group,
            keepalive=config.mqtt.keepalive,
            discover=consumer_filters(config),
        )
        from gateway.ops import metrics

        self.mqtt = MqttServer(
            settings,
            application,
            mqtt_devices(config),
            on_state=lambda up: self.health.set("mqtt", up),
            count=lambda outcome: metrics.mqtt_messages.labels(outcome).inc(),
            on_fault=self.runtime.faults.report,
        )
        self._tasks.append(asyncio.ensure_future(self.mqtt.serve(self.stop)))

    def _start_telegram(self, application: Any, runtime: Any) -> None:
        import functools
        import hashlib

        from consumers.telegram import COMMANDS
        from gateway.layers.clients import redis_client
        from gateway.ops import metrics
        from gateway.redis_url import is_redis
        from protocols.telegram.flow import Limits
        from protocols.telegram.lease import Lease, RedisLease
        from protocols.telegram.server import TelegramServer, TelegramSettings

        tg = self.config.telegram
        settings = TelegramSettings(
            token=tg.token,
            api_url=tg.api_url,
            mode=tg.mode,
            webhook_url=tg.webhook_url,
            webhook_secret=tg.webhook_secret,
            commands=COMMANDS,
            limits=Limits(max_owed=tg.max_queued_alerts),
        )
        layer = self.config.gateway.channel_layer
        lease: Lease = Lease()
        if is_redis(layer):
            # One poller per bot among every process on this Redis; the key names the bot, not the token.
            bot = hashlib.sha256(tg.token.encode()).hexdigest()[:16]
            lease = RedisLease(functools.partial(redis_client, layer), f"gateway:telegram:poller:{bot}")
        self.telegram = TelegramServer(
            settings,
            application,
            startup_chats=runtime.chats.subscribed_chats,
            # Read at every use: a reload changes the list.
            allowed=lambda chat_id: runtime.chats.allowed(chat_id, runtime.config.telegram.allowed_chats),
            lease=lease,
            on_state=self._telegram_state,
            count=metrics.count_telegram,
        )
        runtime.telegram = self.telegram
        runtime.reload_listeners.add(self.telegram.allowance_changed)
        metrics.telegram_queue.set_function(lambda: self.telegram.outbox.depth)

        async def serve() -> None:
            # aiogram's import takes seconds of CPU: let the MQTT connection come up first.
            if self.mqtt is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.mqtt.connected.wait(), 5.0)
            await self.telegram.serve(self.stop)

        self._tasks.append(asyncio.ensure_future(serve()))

    def _telegram_state(self, up: bool, detail: str = "") -> None:
        if up and not self._telegram_settled:
            self._telegram_settled = True
            settle_heap()  # aiogram's modules are in: out of the collector's way too (once)
        self.health.set("telegram", up, detail)

    async def _announce_ready(self) -> None:
        if self.mqtt is not None:
            await self.mqtt.connected.wait()
        settle_heap()
        self.ready.set()
        log.info(
            "ready in %.2fs: %s (site %s)",
            time.monotonic() - self.started,
            ", ".join(self.protocols),
            self.config.gateway.site,
        )

    async def _notify_systemd(self) -> None:
        """READY=1 once every enabled protocol is up, WATCHDOG=1 while alive, STATUS= when it changes."""
        tick = self.watchdog or STATUS_SECONDS
        sent_status = ""
        withheld: list[str] = []
        while True:
            self._count_alerts_soon()
            fields = []
            if not self._notified_ready and self._ready_for_systemd():
                # Later than the "ready in" log line, which waits for MQTT and the web, not Telegram.
                self._notified_ready = True
                fields.append("READY=1")
                log.info("systemd: READY=1 after %.2fs", time.monotonic() - self.started)
            if self.watchdog is not None:
                # A stalled loop sends nothing anyway; a protocol dead for long is worth a restart as well.
                dead = [p for p in self.protocols if self.health.down_for(p) > WATCHDOG_DOWN_LIMIT]
                if dead and not withheld:
                    log.error(
                        "%s down for over %.0fs: no more watchdog pings, systemd will restart the process",
                        ", ".join(dead),
                        WATCHDOG_DOWN_LIMIT,
                    )
                elif withheld and not dead:
                    log.info("every protocol is back: watchdog pings resume")
                withheld = dead
                if not dead:
                    fields.append("WATCHDOG=1")
            status = self._status()
            if status != sent_status:
                fields.append(f"STATUS={status}")
                sent_status = status
            self.notifier.send(*fields)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), tick)

    def _ready_for_systemd(self) -> bool:
        if self.health.connected:  # a sensor failing inside (gateway.faults) must not hold back the start
            return True
        others = [p for p in self.protocols if p != "telegram"]
        if len(others) == len(self.protocols) or not all(self.health.is_up(p) for p in others):
            return False
        if time.monotonic() - self.started < TELEGRAM_READY_WAIT:
            return False
        log.warning(
            "telegram still down after %.0fs: READY=1 without it; it keeps trying", TELEGRAM_READY_WAIT
        )
        return True

    def _status(self) -> str:
        parts = [self.health.summary() or "no protocol servers"]
        if self._alerts is not None:
            active, acknowledged = self._alerts.get("active", 0), self._alerts.get("acknowledged", 0)
            parts.append(f"{active} active alert{'' if active == 1 else 's'}")
            if acknowledged:
                parts.append(f"{acknowledged} acknowledged")
        # One assignment per line in the datagram: a detail must not start another.
        return ", ".join(parts).replace("\n", " ")

    def _count_alerts_soon(self) -> None:
        """Refresh the alert count in the background: a slow database must not hold back a ping."""
        if self.runtime is None or time.monotonic() < self._counted_at + COUNT_SECONDS:
            return
        if self._counting is not None and not self._counting.done():
            return
        self._counted_at = time.monotonic()
        self._counting = asyncio.ensure_future(self._count_alerts())

    async def _count_alerts(self) -> None:
        try:
            counts = await self.runtime.book.open_counts()
        except Exception as err:
            log.debug("counting open alerts for the systemd status failed: %s", err)
            return
        if counts != self._alerts:
            self._alerts = counts
            self._wake.set()

    def _stop_reporting(self) -> None:
        # The announcer may still wait for a broker that never answered: nothing there to drain.
        for task in (self._announcer, self._systemd, self._counting, self._follower):
            if task is not None:
                task.cancel()
        if self.runtime is not None and self.runtime.dashboards is not None:
            self.runtime.dashboards.stop()
        self.notifier.send("STOPPING=1", "STATUS=stopping")

    async def _shutdown(self, runtime: Any) -> None:
        started = time.monotonic()
        # In order, each step bounded, and one failing step does not skip the rest.
        if self.web is not None:
            await _step("web", self.web.stop())
        if self._tasks:
            # The MQTT server sees the stop event: offline status, final disconnects.
            _, pending = await asyncio.wait(self._tasks, timeout=DRAIN_SECONDS)
            for task in pending:
                task.cancel()
        if runtime.peers is not None:
            await _step("peers", runtime.peers.stop())
        await _step("sensor state", runtime.board.flush())
        if self.broker is not None:
            await _step("broker", self.broker.stop())
        log.info("stopped in %.2fs", time.monotonic() - started)


def _debug_stall_seconds(env: Mapping[str, str]) -> float | None:
    """How long SIGUSR2 stalls the loop; only with GATEWAY_DEBUG_STALL_SIGNAL=1 (a watchdog test hook)."""
    if env.get("GATEWAY_DEBUG_STALL_SIGNAL") != "1":
        return None
    try:
        return float(env.get("GATEWAY_DEBUG_STALL_SECONDS", "30"))
    except ValueError:
        return 30.0


async def _step(name: str, coro: Any) -> None:
    try:
        await asyncio.wait_for(coro, 5.0)
    except Exception:
        log.exception("shutdown of %s failed", name)
