"""`gateway check`: the config, then each service it names, one line each; exit 0 only if all is well."""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable

from gateway.config import Config
from gateway.ops import ports


def _line(name: str, ok: bool, detail: str) -> bool:
    print(f"{name:<10}{'ok' if ok else 'FAIL':<6}{detail}")
    return ok


def check(config: Config) -> int:
    results = [
        _line(
            "config",
            True,
            f"{config.source}: site {config.gateway.site!r}, "
            f"{len(config.sensors)} sensors, {len(config.rules)} rules",
        )
    ]
    results.append(_attempt("broker", lambda: _broker(config)))
    results.append(_attempt("database", lambda: _database(config)))
    if config.gateway.channel_layer != "memory":
        results.append(_attempt("redis", lambda: _redis(config.gateway.channel_layer)))
    else:
        results.append(_line("layer", True, "in-memory (single process)"))
    if config.telegram_enabled:
        results.append(_attempt("telegram", lambda: _telegram(config)))
    else:
        results.append(_line("telegram", True, "off (no token)"))
    return 0 if all(results) else 1


def _attempt(name: str, probe: Callable[[], str]) -> bool:
    try:
        return _line(name, True, probe())
    except Exception as err:  # every failure is a line of the report, not a traceback
        return _line(name, False, str(err) or type(err).__name__)


def _broker(config: Config) -> str:
    if config.mqtt.url == "embedded":
        return _embedded_broker(config)
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


def _embedded_broker(config: Config) -> str:
    """Free, or taken by a broker (the running gateway's own, most likely): both fine; else a failure."""
    listener = ports.embedded_broker(config)
    host, port = listener.host, listener.port
    err = ports.bind_error(host, port)
    if err is None:
        return f"embedded broker can listen on {host}:{port}"
    if err.errno != errno.EADDRINUSE:
        raise OSError(listener.cannot_listen(err))
    answer = _connack(listener.local_host, port)
    if answer is not None:
        raise OSError(
            f"{host}:{port} is taken by something that is not an MQTT broker ({answer}): "
            "set mqtt.embedded_bind to a free port"
        )
    return f"an MQTT broker answers on {host}:{port} (a running gateway's embedded broker, or another)"


# MQTT 3.1.1 CONNECT, clean session, keepalive 60 s, client id "gateway-check": every broker answers it.
_CONNECT = b"\x10\x19\x00\x04MQTT\x04\x02\x00\x3c\x00\x0dgateway-check"


def _connack(host: str, port: int, timeout: float = 3.0) -> str | None:
    """None if an MQTT broker answers CONNECT on host:port (with any return code), else what happened."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_CONNECT)
            answer = b""
            while len(answer) < 4 and (chunk := sock.recv(4 - len(answer))):
                answer += chunk
            if answer[:2] == b"\x20\x02":
                sock.sendall(b"\xe0\x00")  # DISCONNECT
                return None
            return f"it answered {answer!r} to an MQTT CONNECT" if answer else "it closed the connection"
    except TimeoutError:
        return f"no answer to an MQTT CONNECT within {timeout:.0f} s"
    except OSError as err:
        return err.strerror or str(err)


def _database(config: Config) -> str:
    from gateway import settings

    settings.setup(config)
    from django.db import connection

    connection.ensure_connection()
    vendor = connection.vendor
    connection.close()
    return f"{vendor} reachable, schema up to date"


def _redis(url: str) -> str:
    from gateway.redis_url import client, label

    redis = client(url, asynchronous=False, socket_timeout=3, socket_connect_timeout=3)
    redis.ping()
    return f"{label(url)} answers PING"


def _telegram(config: Config) -> str:
    from gateway.ops import logs
    from protocols.telegram.server import hide_token

    hide_token(config.telegram.token)
    url = f"{config.telegram.api_url.rstrip('/')}/bot{config.telegram.token}/getMe"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            data = json.load(resp)
    except urllib.error.HTTPError as err:
        raise OSError(f"getMe answered HTTP {err.code}") from None
    except urllib.error.URLError as err:
        raise OSError(logs.redact(f"{config.telegram.api_url}: {err.reason}")) from None
    except Exception as err:  # whatever it says may repeat the URL, and the URL holds the token
        raise OSError(logs.redact(f"{type(err).__name__}: {err}")) from None
    if not data.get("ok"):
        raise OSError("getMe did not answer ok")
    return f"bot @{data['result'].get('username')} ({config.telegram.api_url})"
