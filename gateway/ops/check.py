"""`gateway check`: the config, then each service it names, one line each; exit 0 only if all is well.

The probes that need a part above ops (an MQTT session, the database, a Redis client) are given
by `gateway.cli`, so this room imports no protocol and no store."""

from __future__ import annotations

import errno
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import Config, ConfigError
from gateway.ops import logs, ports

EXIT_CONFIG = 2  # as gateway.cli: a config that `gateway run` refuses


def _line(name: str, ok: bool, detail: str) -> bool:
    print(f"{name:<10}{'ok' if ok else 'FAIL':<6}{detail}")
    return ok


@dataclass(frozen=True)
class Probes:
    """Each returns what it found, or raises what went wrong."""

    broker: Callable[[Config], str]  # an external broker (not the embedded one)
    database: Callable[[Config], str]
    redis: Callable[[str], str]
    apps: Callable[[Config], str]  # the [[consumers]] and [[workers]] (after database: Django is set up)


def check(config: Config, probes: Probes) -> int:
    results = [
        _line(
            "config",
            True,
            f"{config.source}: site {config.gateway.site!r}, "
            f"{len(config.sensors)} sensors, {len(config.rules)} rules",
        )
    ]
    results.append(_attempt("broker", lambda: _broker(config, probes.broker)))
    results.append(_attempt("database", lambda: probes.database(config)))
    config_error = False
    if config.consumers or config.workers:
        try:
            results.append(_line("apps", True, probes.apps(config)))
        except ConfigError as err:  # what stops `gateway run`: exit 2 here too
            _line("apps", False, str(err))
            config_error = True
        except Exception as err:
            results.append(_line("apps", False, str(err) or type(err).__name__))
    if config.gateway.channel_layer != "memory":
        results.append(_attempt("redis", lambda: probes.redis(config.gateway.channel_layer)))
    else:
        results.append(_line("layer", True, "in-memory (single process)"))
    if config.telegram_enabled:
        results.append(_attempt("telegram", lambda: _telegram(config)))
    else:
        results.append(_line("telegram", True, "off (no token)"))
    if config_error:
        return EXIT_CONFIG
    return 0 if all(results) else 1


def _attempt(name: str, probe: Callable[[], str]) -> bool:
    try:
        return _line(name, True, probe())
    except Exception as err:  # every failure is a line of the report, not a traceback
        return _line(name, False, str(err) or type(err).__name__)


def _broker(config: Config, external: Callable[[Config], str]) -> str:
    return _embedded_broker(config) if config.mqtt.url == "embedded" else external(config)


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


def _telegram(config: Config) -> str:
    logs.hide_bot_token(config.telegram.token)
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
