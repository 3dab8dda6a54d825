"""`Gateway`: starts the protocol servers of this process on one event loop and stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

from gateway import logs
from gateway.config import Config
from gateway.health import Health

log = logs.server

PROTOCOLS = ("web", "mqtt", "telegram")
DRAIN_SECONDS = 8.0


def event_loop(protocols: list[str]) -> asyncio.AbstractEventLoop:
    """daphne's loop when this process serves HTTP (Twisted must share it), else a plain one."""
    if "web" in protocols:
        import daphne.server  # noqa: F401 - installs the asyncio reactor
        from twisted.internet import reactor

        loop: asyncio.AbstractEventLoop = reactor._asyncioEventloop  # type: ignore[attr-defined]
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def mqtt_devices(config: Config) -> list[Any]:
    from consumers.site import ack_topic
    from protocols.mqtt.server import Device

    devices = [Device(s.id, s.topics) for s in config.sensors]
    devices.append(Device(f"site:{config.gateway.site}", (ack_topic(config.gateway.site),)))
    return devices


class Gateway:
    def __init__(self, config: Config, protocols: list[str]) -> None:
        self.config = config
        self.protocols = [p for p in protocols if p != "telegram" or config.telegram_enabled]
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

    async def reload(self) -> bool:
        """Re-read the config file; a bad one is refused and the running config stays."""
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

        self._signals()
        config = self.config
        runtime = self.runtime = Runtime(config, self.health)
        await runtime.load()
        application = build_application(runtime)
        try:
            if "mqtt" in self.protocols:
                await self._start_mqtt(application)
            if "web" in self.protocols:
                from protocols.websocket.server import WebServer

                self.web = WebServer(application, config.http.host, config.http.port)
                await self.web.start()
                self.health.set("web", True)
            if "telegram" in self.protocols:
                self._start_telegram(application, runtime)
            self._tasks.append(asyncio.ensure_future(self._announce_ready()))
            await self.stop.wait()
        finally:
            self.stop.set()
            await self._shutdown(runtime)

    async def _start_mqtt(self, application: Any) -> None:
        from protocols.mqtt.client import BrokerAddress
        from protocols.mqtt.server import MqttServer, MqttSettings

        config = self.config
        if config.mqtt.url == "embedded":
            from gateway.broker import EmbeddedBroker
            from gateway.config import _host_port

            host, port = _host_port(config.mqtt.embedded_bind, "embedded_bind")
            self.broker = EmbeddedBroker(host, port)
            await self.broker.start()
            address = BrokerAddress(host if host not in ("0.0.0.0", "::") else "127.0.0.1", port)
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
        )
        from gateway import metrics

        self.mqtt = MqttServer(
            settings,
            application,
            mqtt_devices(config),
            on_state=lambda up: self.health.set("mqtt", up),
            count=lambda outcome: metrics.mqtt_messages.labels(outcome).inc(),
        )
        self._tasks.append(asyncio.ensure_future(self.mqtt.serve(self.stop)))

    def _start_telegram(self, application: Any, runtime: Any) -> None:
        import hashlib

        from consumers.telegram import COMMANDS
        from gateway import metrics
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
        )
        layer = self.config.gateway.channel_layer
        lease: Lease = Lease()
        if layer.startswith(("redis://", "rediss://", "unix://")):
            # One poller per bot among every process on this Redis; the key names the bot, not the token.
            bot = hashlib.sha256(tg.token.encode()).hexdigest()[:16]
            lease = RedisLease(layer, f"gateway:telegram:poller:{bot}")
        self.telegram = TelegramServer(
            settings,
            application,
            startup_chats=runtime.chats.subscribed_chats,
            lease=lease,
            on_state=lambda up, detail: self.health.set("telegram", up, detail),
            count=metrics.count_telegram,
        )
        runtime.telegram = self.telegram
        metrics.telegram_queue.set_function(lambda: self.telegram.outbox.depth)

        async def serve() -> None:
            # aiogram's import takes seconds of CPU: let the MQTT connection come up first.
            if self.mqtt is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.mqtt.connected.wait(), 5.0)
            await self.telegram.serve(self.stop)

        self._tasks.append(asyncio.ensure_future(serve()))

    async def _announce_ready(self) -> None:
        if self.mqtt is not None:
            await self.mqtt.connected.wait()
        self.ready.set()
        log.info(
            "ready in %.2fs: %s (site %s)",
            time.monotonic() - self.started,
            ", ".join(self.protocols),
            self.config.gateway.site,
        )

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
        await _step("sensor state", runtime.board.flush())
        if self.broker is not None:
            await _step("broker", self.broker.stop())
        log.info("stopped in %.2fs", time.monotonic() - started)


async def _step(name: str, coro: Any) -> None:
    try:
        await asyncio.wait_for(coro, 5.0)
    except Exception:
        log.exception("shutdown of %s failed", name)
