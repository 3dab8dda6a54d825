"""`gateway run` and `gateway check`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from gateway.config import Config, ConfigError, load_config
from gateway.ops import logs, ports
from gateway.server import PROTOCOLS, usable

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Multi-protocol alert gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway")
    run.add_argument("--config", help="TOML file (default: $GATEWAY_CONFIG, else ./gateway.toml)")
    run.add_argument(
        "--protocol",
        action="append",
        choices=PROTOCOLS,
        help="run only these protocol servers (repeatable; default: all)",
    )
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    check = sub.add_parser("check", help="validate the config and try every service it names")
    check.add_argument("--config", help="TOML file (default: $GATEWAY_CONFIG, else ./gateway.toml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"gateway: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        from gateway.ops.check import Probes, check

        probes = Probes(broker=_probe_broker, database=_probe_database, redis=_probe_redis, apps=_probe_apps)
        return check(config, probes)
    return run(config, args.protocol or list(PROTOCOLS), args.log_level)


def run(config: Config, protocols: list[str], log_level: str = "INFO") -> int:
    from gateway import settings
    from gateway.server import Gateway, event_loop

    logs.setup(log_level)
    if protocols == ["telegram"] and not config.telegram_enabled:
        print("gateway: --protocol telegram needs telegram.token in the config", file=sys.stderr)
        return EXIT_CONFIG
    if protocols == ["worker"] and not config.workers:
        print("gateway: --protocol worker needs [[workers]] in the config", file=sys.stderr)
        return EXIT_CONFIG
    # Every address before anything starts or connects: one line for each that is taken.
    taken = ports.unavailable(config, protocols)
    for line in taken:
        print(f"gateway: {line}", file=sys.stderr)
    if taken:
        return 1
    wanted = set(usable(config, PROTOCOLS))
    if config.gateway.channel_layer == "memory" and not wanted <= set(protocols):
        logs.server.warning(
            "split mode with the in-memory channel layer: other processes will not hear this one"
        )
    loop = event_loop(protocols)
    try:
        settings.setup(config)
    except Exception as err:
        print(f"gateway: database {_db_label(config)}: {err}", file=sys.stderr)
        return 1
    from gateway.asgi import load_extensions

    try:
        load_extensions(config)  # with Django set up: an app may use the models
    except ConfigError as err:
        print(f"gateway: config error: {config.source}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    gateway = Gateway(config, protocols)
    try:
        loop.run_until_complete(gateway.run())
    except ports.CannotListen as err:
        print(f"gateway: {err}", file=sys.stderr)
        return 1
    finally:
        _close(loop)
    return 0


def _db_label(config: Config) -> str:
    from urllib.parse import urlsplit

    url = config.gateway.database
    if not url:
        return str(config.gateway.state_dir / "gateway.sqlite3")
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"


def _close(loop: Any) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


# `gateway check`'s probes of the parts above ops (gateway.ops.check runs them).


def _probe_broker(config: Config) -> str:
    """An MQTT session as the gateway opens it (the protocol version negotiated the same way)."""
    from protocols.mqtt.client import BrokerAddress
    from protocols.mqtt.server import MqttServer, MqttSettings

    address = BrokerAddress.from_url(config.mqtt.url)

    async def probe() -> str:
        server = MqttServer(
            MqttSettings(
                address, f"{config.mqtt.client_id}-check", config.mqtt.protocol, connect_timeout=3.0
            ),
            application=lambda *args: None,  # no devices: no instance ever runs
            devices=[],
        )
        stop = asyncio.Event()
        task = asyncio.ensure_future(server.serve(stop))
        try:
            await asyncio.wait_for(server.connected.wait(), 6.0)
        except TimeoutError:
            raise OSError(f"{address}: no MQTT connection within 6 s") from None
        finally:
            stop.set()
            await task
        return f"{address} (MQTT {server.protocol})"

    return asyncio.run(probe())


def _probe_database(config: Config) -> str:
    from gateway import settings

    settings.setup(config)
    from django.db import connection

    connection.ensure_connection()
    vendor = connection.vendor
    connection.close()
    return f"{vendor} reachable, schema up to date"


def _probe_apps(config: Config) -> str:
    """Every `app` of [[consumers]] and [[workers]] imported, as `gateway run` does once Django is set up."""
    from django.apps import apps

    if not apps.ready:
        raise OSError("not tried: Django could not be set up (see database)")
    from gateway.asgi import load_extensions

    load_extensions(config)
    return "imported " + ", ".join([c.app for c in config.consumers] + [w.app for w in config.workers])


def _probe_redis(url: str) -> str:
    from gateway.layers.clients import redis_client
    from gateway.redis_url import label

    redis = redis_client(url, asynchronous=False, socket_timeout=3, socket_connect_timeout=3)
    redis.ping()
    return f"{label(url)} answers PING"
