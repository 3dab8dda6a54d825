"""`Gateway`: starts the protocol servers of this process on one event loop and stops them in order."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from gateway.config import Config
from gateway.ops import logs, ports
from gateway.ops.health import Health
from gateway.ops.notify import Notifier, Reporter, watchdog_interval
from gateway.ops.process import descriptors, settle_heap, without_pyopenssl
from protocols.lifecycle import Server, Servers

log = logs.server

PROTOCOLS = ("web", "mqtt", "telegram", "worker")
# The protocol servers drain together within this; each later step of the shutdown has STEP_SECONDS.
DRAIN_SECONDS = 8.0
STEP_SECONDS = 5.0


def usable(config: Config, protocols: Iterable[str]) -> list[str]:
    """Those of `protocols` the config gives work to: Telegram needs a bot token, a worker [[workers]]."""
    work = {"telegram": config.telegram_enabled, "worker": bool(config.workers)}
    return [p for p in protocols if work.get(p, True)]


def event_loop(protocols: list[str]) -> asyncio.AbstractEventLoop:
    """daphne's loop when this process serves HTTP (Twisted must share it), else a plain one."""
    if "web" in protocols:
        without_pyopenssl()
        from protocols import _autobahn
        from protocols._twisted import reactor_loop

        with _autobahn.lean():
            loop = reactor_loop()  # daphne's import installs Twisted's asyncio reactor
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def mqtt_devices(config: Config) -> list[Any]:
    from consumers.discovery import DEVICE as DISCOVERY_DEVICE
    from consumers.site import command_topics
    from gateway.asgi import consumer_devices
    from protocols.mqtt.server import Device

    devices = [Device(s.id, s.topics) for s in config.sensors]
    devices.append(Device(f"site:{config.gateway.site}", tuple(command_topics(config.gateway.site))))
    if config.discovery.enabled:
        devices.append(Device(DISCOVERY_DEVICE, config.discovery.topics))
    devices += [Device(name, (topic,)) for name, topic in consumer_devices(config).items()]
    return devices


# File descriptors a web process needs besides its WebSockets and half-open connections:
# the listener, the database, the MQTT and Redis connections, the broker's clients, logs.
DESCRIPTORS_BESIDES = 256


class Gateway:
    def __init__(self, config: Config, protocols: list[str], env: Mapping[str, str] | None = None) -> None:
        # As the file gives it (after reloads); `config` is what runs: these sensors and the discovered.
        self.configured = config
        self.config = config
        self.protocols = usable(config, protocols)
        self.health = Health(self.protocols)
        self.stop = asyncio.Event()
        self.started = time.monotonic()
        self.ready = asyncio.Event()
        # The protocol servers, and what they lean on (the embedded broker): started before them,
        # stopped after them and after the runtime's state is saved.
        self.servers = Servers()
        self.backends = Servers()
        self.mqtt: Any = None
        self.telegram: Any = None
        self.runtime: Any = None
        # systemd's side: what NOTIFY_SOCKET and WATCHDOG_USEC ask of this process (nothing outside systemd).
        env = os.environ if env is None else env
        self.notifier = Notifier(env.get("NOTIFY_SOCKET"))
        self.watchdog = watchdog_interval(env, os.getpid())
        self.debug_stall = _debug_stall_seconds(env)
        self._announcer: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._telegram_settled = False
        self.systemd = Reporter(self.notifier, self.health, self.watchdog, self.started)
        self._systemd: asyncio.Task[None] | None = None

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
        reloading = self.systemd.ready_sent
        if reloading:
            self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            return self._reload()
        finally:
            if reloading:
                self.notifier.send("READY=1", f"STATUS={self.systemd.status()}")

    def _reload(self) -> bool:
        from gateway.config import ConfigError, load_config
        from gateway.reload import merge

        source = self.config.source
        try:
            new = load_config(None if source == "built-in defaults" else source)
        except ConfigError as err:
            log.error("reload refused, the running config stays: %s", err)
            return False
        merged, needs_restart = merge(self.configured, new)
        self.configured = merged
        merged = self._run_with_discovered()
        log.info(
            "config reloaded from %s: %d sensors, %d rules", source, len(merged.sensors), len(merged.rules)
        )
        if needs_restart:
            log.warning("not applied until a restart: %s", ", ".join(needs_restart))
        return True

    def _run_with_discovered(self) -> Config:
        """Run the configured sensors and the discovered ones (SPEC §11), as a reload applies a config."""
        running = self._with_discovered()
        if self.mqtt is not None:
            self.mqtt.update_devices(mqtt_devices(running))
        return running

    def _with_discovered(self) -> Config:
        from gateway.engine.discovery import with_discovered

        discovered = [] if self.runtime is None else self.runtime.discovered.sensors
        running = self.config = with_discovered(self.configured, discovered)
        if self.runtime is not None:
            self.runtime.reload(running)
        return running

    async def _apply_discovered(self) -> None:
        from gateway.engine.discovery import with_discovered

        before = set(self.config.sensors_by_id)
        discovered = [] if self.runtime is None else self.runtime.discovered.sensors
        new = set(with_discovered(self.configured, discovered).sensors_by_id) - before
        rows = []
        if new and self.runtime is not None:
            # Their last state, before their consumers start and their rules take it up.
            try:
                rows = await self.runtime.stored_sensors(sorted(new))
            except Exception as err:  # a locked or gone database: they start unknown, as with none stored
                log.error("discovery: could not read the stored state of new sensors: %s", err)
        # From here to the subscription nothing waits: a sensor the API and the dashboards show is
        # subscribed (a reading sent once it shows is not lost), and a reload that came meanwhile counts.
        running = self._with_discovered()
        if self.runtime is not None:
            self.runtime.restore_sensors(rows)
        if self.mqtt is not None:
            self.mqtt.update_devices(mqtt_devices(running))
        after = set(running.sensors_by_id)
        log.info(
            "discovery: %d sensors discovered (%d new, %d gone), %d rules",
            len(running.sensors) - len(self.configured.sensors),
            len(after - before),
            len(before - after),
            len(running.rules),
        )

    async def run(self) -> None:
        from gateway.asgi import build_application
        from gateway.redis_url import is_redis
        from gateway.runtime import Runtime
        from gateway.web.auth import TokenGate

        self._signals()
        config = self.config
        runtime = self.runtime = Runtime(config, self.health, token_gate=TokenGate())
        runtime.apply_discovered = self._apply_discovered
        runtime.mqtt_out = "mqtt" in self.protocols or is_redis(config.gateway.channel_layer)
        await runtime.load()
        self.systemd.count_alerts = runtime.book.open_counts
        application = build_application(runtime)
        try:
            if self.notifier.enabled:
                self._systemd = asyncio.ensure_future(self.systemd.run())
            await self._start_runtime(runtime)
            await runtime.alerting.follow()
            runtime.alerting.start()  # what falls due waits for the servers (SiteAlerting.servers_ready)
            self.backends = Servers(self.backend_servers())
            self.servers = Servers(self.protocol_servers(application, runtime))
            await self.backends.start()
            await self.servers.start()
            self._announcer = asyncio.ensure_future(self._announce_ready())
            await self.stop.wait()
        finally:
            self.stop.set()
            self._stop_reporting()
            await self._shutdown(runtime)
            self.notifier.close()

    async def _start_runtime(self, runtime: Any) -> None:
        """Where sensor readings come from: this process's MQTT server, which shares them with its peers
        on a shared subscription (gateway.layers.peers, joined before the first message), or else, in
        a web process of the split mode, the MQTT processes over the channel layer."""
        from channels.layers import get_channel_layer

        from gateway.layers.peers import PeerMirror

        if "mqtt" in self.protocols:
            runtime.history.start()  # only the processes that receive readings write them
            layer = get_channel_layer()
            if self.config.mqtt.shared_group and layer is not None:
                runtime.peers = PeerMirror(layer)
                await runtime.peers.start()
        elif "web" in self.protocols:
            self._follower = asyncio.ensure_future(runtime.follow_sensors())

    def backend_servers(self) -> list[Server]:
        if "mqtt" not in self.protocols or self.config.mqtt.url != "embedded":
            return []
        from protocols.mqtt.broker import EmbeddedBroker

        listener = ports.embedded_broker(self.config)
        return [Listening(EmbeddedBroker(listener.host, listener.port), listener)]

    def protocol_servers(self, application: Any, runtime: Any) -> list[Server]:
        """This process's protocol servers, in the order they start (Telegram waits for MQTT's)."""
        builders: dict[str, Callable[[Any, Any], Server]] = {
            "mqtt": self._mqtt,
            "web": self._web,
            "telegram": self._telegram,
            "worker": self._worker,
        }
        return [build(application, runtime) for name, build in builders.items() if name in self.protocols]

    def _mqtt(self, application: Any, runtime: Any) -> Server:
        from gateway.asgi import consumer_filters
        from gateway.ops import metrics
        from protocols.mqtt.client import BrokerAddress
        from protocols.mqtt.server import MqttServer, MqttSettings

        config = self.config
        if config.mqtt.url == "embedded":
            listener = ports.embedded_broker(config)
            address = BrokerAddress(listener.local_host, listener.port)
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
            not_shared=config.discovery.topics,
        )
        mqtt = self.mqtt = MqttServer(
            settings,
            application,
            mqtt_devices(config),
            on_state=partial(self.health.set, "mqtt"),
            count=lambda outcome: metrics.mqtt_messages.labels(outcome).inc(),
            on_fault=runtime.faults.report,
        )
        return mqtt

    def _web(self, application: Any, runtime: Any) -> Server:
        from channels.layers import get_channel_layer

        from consumers.dashboard import hub_of
        from gateway.web.views import gate
        from protocols.websocket.http_guard import Guard
        from protocols.websocket.server import WebServer

        http = self.config.http
        descriptors(http.max_websockets + http.max_half_open + DESCRIPTORS_BESIDES)
        web = WebServer(
            application,
            http.host,
            http.port,
            send_buffer=http.websocket_send_buffer,
            guard=Guard(gate(runtime), http.max_half_open, http.request_timeout),
            on_state=partial(self.health.set, "web"),
        )
        layer = get_channel_layer()
        if hasattr(layer, "recovered"):
            layer.recovered.append(hub_of(runtime).restart_all)
        return Listening(web, ports.web(self.config))

    def _telegram(self, application: Any, runtime: Any) -> Server:
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
        telegram = self.telegram = TelegramServer(
            settings,
            application,
            startup_chats=runtime.chats.subscribed_chats,
            # Read at every use: a reload changes the list.
            allowed=lambda chat_id: runtime.chats.allowed(chat_id, runtime.config.telegram.allowed_chats),
            lease=lease,
            # aiogram's import takes seconds of CPU: let the MQTT connection come up first.
            load_after=None if self.mqtt is None else self.mqtt.connected,
            on_state=self._telegram_state,
            count=metrics.count_telegram,
        )
        runtime.telegram = telegram
        runtime.reload_listeners.add(telegram.allowance_changed)
        metrics.telegram_queue.set_function(lambda: telegram.outbox.depth)
        return telegram

    def _worker(self, application: Any, runtime: Any) -> Server:
        from protocols.worker import WorkerServer

        channels = [w.channel for w in self.config.workers]
        return WorkerServer(application, channels, runtime.layer, on_state=partial(self.health.set, "worker"))

    def _telegram_state(self, up: bool, detail: str = "") -> None:
        if up and not self._telegram_settled:
            self._telegram_settled = True
            settle_heap()  # aiogram's modules are in: out of the collector's way too (once)
        self.health.set("telegram", up, detail)

    async def _announce_ready(self) -> None:
        await self.servers.ready()
        if self.runtime is not None:
            self.runtime.alerting.servers_ready.set()
        settle_heap()
        self.ready.set()
        log.info(
            "ready in %.2fs: %s (site %s)",
            time.monotonic() - self.started,
            ", ".join(self.protocols),
            self.config.gateway.site,
        )

    def _stop_reporting(self) -> None:
        # The announcer may still wait for a broker that never answered: nothing there to drain.
        for task in (self._announcer, self._systemd, self._follower):
            if task is not None:
                task.cancel()
        if self.runtime is not None and self.runtime.dashboards is not None:
            self.runtime.dashboards.stop()
        if self.runtime is not None:
            self.runtime.alerting.stop()
        self.systemd.stop()

    async def _shutdown(self, runtime: Any) -> None:
        started = time.monotonic()
        # In order, each step bounded, and one failing step does not skip the rest: the protocol
        # servers together (MQTT says offline, Telegram sends what is queued), the runtime's state,
        # then what the servers leaned on to their end (the embedded broker).
        await self.servers.drain(DRAIN_SECONDS)
        if runtime.peers is not None:
            await _step("peers", runtime.peers.stop())
        await _step("sensor state", runtime.board.flush())
        await _step("history", runtime.history.stop())
        await _step("alert journal", runtime.book.close())
        await self.backends.drain(STEP_SECONDS)
        log.info("stopped in %.2fs", time.monotonic() - started)


@dataclass
class Listening:
    """`server`, whose start binds `listener`'s address: failing to, it raises `CannotListen`, which
    names the config key to change."""

    server: Server
    listener: ports.Listener

    @property
    def name(self) -> str:
        return self.server.name

    @property
    def ready(self) -> asyncio.Event:
        return self.server.ready

    async def start(self) -> None:
        await self.listener.start(self.server.start)

    async def serve(self, stop: asyncio.Event) -> None:
        await self.server.serve(stop)


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
        await asyncio.wait_for(coro, STEP_SECONDS)
    except Exception:
        log.exception("shutdown of %s failed", name)
