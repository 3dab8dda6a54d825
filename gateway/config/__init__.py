"""The one typed configuration object: TOML in, validated `Config` out.

Nothing else in the project reads the environment or the TOML file; everything
receives the `Config` built here.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.config.alerting import (
    MODE_NAME,
    Action,
    EscalationStep,
    Schedule,
    check_escalation,
    check_group,
    check_modes,
    check_timezone,
)
from gateway.config.discovery import DiscoverySection
from gateway.config.extending import Consumer, Worker, check_extensions
from gateway.config.fields import Duration, Section, parse_duration
from gateway.config.history import HistorySection
from gateway.config.sensors import Sensor

__all__ = [
    "Action",
    "Config",
    "ConfigError",
    "EscalationStep",
    "Schedule",
    "load_config",
    "parse_duration",
]


class ConfigError(Exception):
    """A configuration problem, phrased for the user: it names the key."""


def _host_port(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{key} must look like HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


# A DNS name (a leading dot: with its subdomains), or "*" for any.
_HOST = re.compile(r"\*|\.?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


class GatewaySection(Section):
    site: str = Field(default="home", pattern=r"^[A-Za-z0-9_-]+$")
    state_dir: Path = Path("./var")
    database: str = ""
    channel_layer: str = "memory"
    # With the in-memory layer (one process): alert changes journaled in a file before the
    # database (gateway.store.journal); journal_fsync: each one on the disk before it is told.
    journal: bool = True
    journal_fsync: bool = False
    # Arming modes (empty: off), the one to start in (default: the first), local time for schedules.
    modes: list[Annotated[str, Field(pattern=MODE_NAME)]] = []
    mode: str = ""
    timezone: str = ""

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("database")
    @classmethod
    def _database(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("postgres", "postgresql", "sqlite"):
            raise ValueError("must be empty (SQLite in state_dir), postgres://… or sqlite:///path")
        return value

    @field_validator("channel_layer")
    @classmethod
    def _layer(cls, value: str) -> str:
        from gateway.redis_url import is_redis, parse_sentinel

        if value != "memory" and not is_redis(value):
            raise ValueError(
                'must be "memory", a redis://host:6379/0 URL or redis+sentinel://host:26379,…/<master>'
            )
        parse_sentinel(value)  # a malformed Sentinel URL says what is wrong
        return value


class HttpSection(Section):
    bind: str = "127.0.0.1:8000"
    allowed_origins: list[str] = []
    # WebSockets this process holds at most; more are refused at the handshake.
    max_websockets: int = Field(default=4096, ge=1)
    # Bytes waiting to reach one WebSocket client before it is dropped as too slow.
    websocket_send_buffer: int = Field(default=262144, ge=4096)
    # Names the gateway is reached by, besides bind's host, localhost and IP addresses:
    # a request for any other Host is refused (DNS rebinding).
    hosts: list[str] = []
    # Proxies (addresses or networks) whose X-Forwarded-For names the client.
    trusted_proxies: list[str] = []
    # Seconds a client has to send a whole request (head and body) once it connected or was answered.
    request_timeout: float = Field(default=10.0, gt=0)
    # Connections whose request has not fully arrived, at most; past it the oldest is closed.
    max_half_open: int = Field(default=256, ge=1)

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        _host_port(value, "bind")
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not _HOST.fullmatch(host):
                raise ValueError(
                    f"{host!r} is not a host name: write it as in the address bar, without scheme "
                    'or port ("alerts.example.net", ".example.net" for every subdomain too, or "*")'
                )
        return [host.lower() for host in value]

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for proxy in value:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"{proxy!r} is not an IP address or network such as 10.0.0.0/8") from None
        return value

    @property
    def host(self) -> str:
        return _host_port(self.bind, "bind")[0]

    @property
    def port(self) -> int:
        return _host_port(self.bind, "bind")[1]


class AuthSection(Section):
    tokens: dict[str, str] = {}

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, value: dict[str, str]) -> dict[str, str]:
        for name, token in value.items():
            if len(token) < 8:
                raise ValueError(f"token {name!r} is shorter than 8 characters")
        return value


class MqttSection(Section):
    url: str = "embedded"
    embedded_bind: str = "127.0.0.1:1883"
    client_id: str = ""  # default: gateway-<site>
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    shared_group: str = Field(default="", pattern=r"^[A-Za-z0-9_-]*$")
    max_payload: int = Field(default=65536, gt=0)
    keepalive: int = Field(default=30, ge=5)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, value: Any) -> Any:
        return {5: "5", 3.1: "3.1.1", 311: "3.1.1"}.get(value, value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value != "embedded":
            parts = urlsplit(value)
            if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
                raise ValueError('must be "embedded" or mqtt://[user:pass@]host[:port] / mqtts://…')
            parts.port  # noqa: B018 - raises ValueError on a bad port
        return value

    @field_validator("embedded_bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        _host_port(value, "embedded_bind")
        return value


class TelegramSection(Section):
    token: str = ""
    api_url: str = "https://api.telegram.org"
    allowed_chats: list[int] = []
    mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str = ""  # the gateway's public https base URL; the webhook path is appended
    webhook_secret: str = Field(default="", pattern=r"^[A-Za-z0-9_-]{0,256}$")
    # Alerts waiting for Telegram, over every chat; beyond, they wait in the database instead.
    max_queued_alerts: int = Field(default=20_000, ge=1)

    @field_validator("token")
    @classmethod
    def _token(cls, value: str) -> str:
        # The message must not echo the token: it is a secret.
        if value and not re.fullmatch(r"[0-9]{1,20}:[A-Za-z0-9_-]{20,}", value):
            raise ValueError(
                "is not a bot token (<digits>:<35 letters, digits, - or _>, as @BotFather gives)"
            )
        return value

    @field_validator("api_url", "webhook_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value:
            parts = urlsplit(value)
            try:
                parts.port  # noqa: B018 - raises for a port that is not a number from 0 to 65535
            except ValueError:
                raise ValueError("must be an http:// or https:// URL with a numeric port") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL")
            # A request URL is built on it: spaces, control characters, a query or a fragment break it.
            if any(c.isspace() or not c.isprintable() for c in value) or parts.query or parts.fragment:
                raise ValueError("must be an http:// or https:// URL without spaces, query or fragment")
        return value

    @model_validator(mode="after")
    def _webhook(self) -> TelegramSection:
        if self.token and self.mode == "webhook":
            if not self.webhook_url:
                raise ValueError("webhook mode needs telegram.webhook_url (the gateway's public https URL)")
            if len(self.webhook_secret) < 16:
                raise ValueError("webhook mode needs telegram.webhook_secret, 16 to 256 of A-Z a-z 0-9 _ -")
        return self


def _scalar(value: Any) -> Any:
    # One message, not one for each member of the union below.
    if value is not None and not isinstance(value, bool | int | float | str):
        raise ValueError("must be a boolean, a number or a string")
    return value


Scalar = Annotated[bool | int | float | str, BeforeValidator(_scalar)]


class Condition(Section):
    equals: Scalar | None = None
    above: float | None = None
    below: float | None = None
    offline: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> Condition:
        given = [k for k in ("equals", "above", "below", "offline") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of equals, above, below, offline")
        if self.offline is False:
            raise ValueError("offline can only be true")
        return self


class Rule(Section):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    sensor: str = ""
    zone: str = ""
    when: Condition
    clear: Condition | None = None
    for_: Duration = Field(default=0.0, alias="for")
    severity: Literal["critical", "warning", "info"] = "warning"
    message: str = "{sensor.name}: {rule.id}"
    cooldown: Duration = 0.0
    repeat: Duration = 0.0
    notify: list[str] = []
    on_raise: list[Action] = []
    on_clear: list[Action] = []
    modes: list[str] = []  # raises only in these modes (none: in every mode)
    escalate: list[EscalationStep] = []

    @model_validator(mode="after")
    def _target(self) -> Rule:
        if bool(self.sensor) == bool(self.zone):
            raise ValueError("give exactly one of sensor or zone")
        if self.clear is not None and (self.when.offline or self.clear.offline):
            raise ValueError("an offline rule clears when the sensor is back online; drop clear")
        for group in self.notify:
            check_group(group)
        return self


class Config(Section):
    gateway: GatewaySection = GatewaySection()
    http: HttpSection = HttpSection()
    auth: AuthSection = AuthSection()
    mqtt: MqttSection = MqttSection()
    telegram: TelegramSection = TelegramSection()
    discovery: DiscoverySection = DiscoverySection()
    history: HistorySection = HistorySection()
    sensors: list[Sensor] = []
    rules: list[Rule] = []
    schedules: list[Schedule] = []
    consumers: list[Consumer] = []
    workers: list[Worker] = []
    # Where it came from, for messages; not a TOML key.
    source: str = Field(default="built-in defaults", exclude=True)

    @model_validator(mode="after")
    def _cross(self) -> Config:
        if not self.mqtt.client_id:
            self.mqtt.client_id = f"gateway-{self.gateway.site}"
        _unique("sensors", [s.id for s in self.sensors])
        _unique("rules", [r.id for r in self.rules])
        sensor_ids = {s.id for s in self.sensors}
        zones = {s.zone for s in self.sensors}
        # With discovery on, a rule may name a sensor or zone that discovery brings (SPEC §11).
        known = not self.discovery.enabled
        for rule in self.rules:
            if known and rule.sensor and rule.sensor not in sensor_ids:
                raise ValueError(f"rules[{rule.id}].sensor: no sensor with id {rule.sensor!r}")
            if known and rule.zone and rule.zone not in zones:
                raise ValueError(f"rules[{rule.id}].zone: no sensor is in zone {rule.zone!r}")
            out_of_order = check_escalation(rule.escalate)
            if out_of_order:
                raise ValueError(f"rules[{rule.id}].{out_of_order}")
        check_modes(self.gateway.modes, self.gateway.mode, self.schedules, self.rules)
        if self.gateway.modes and not self.gateway.mode:
            self.gateway.mode = self.gateway.modes[0]
        check_extensions(self.consumers, self.workers)
        return self

    @property
    def sensors_by_id(self) -> dict[str, Sensor]:
        return {s.id: s for s in self.sensors}

    def rules_for(self, sensor: Sensor) -> list[Rule]:
        return [r for r in self.rules if r.sensor == sensor.id or r.zone == sensor.zone]

    @property
    def telegram_enabled(self) -> bool:
        return bool(self.telegram.token)


def _unique(key: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for ident in ids:
        if ident in seen:
            raise ValueError(f"{key}: id {ident!r} is used twice")
        seen.add(ident)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


def _expand(node: Any, env: dict[str, str], path: str) -> Any:
    if isinstance(node, dict):
        return {k: _expand(v, env, f"{path}.{k}" if path else k) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, env, f"{path}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(match: re.Match[str]) -> str:
            name, has_default, default = match.group(1), match.group(2), match.group(3)
            if has_default is not None:
                return env.get(name) or default or ""  # as in the shell: unset or empty
            if name in env:
                return env[name]
            raise ConfigError(
                f"{path}: environment variable {name} is not set "
                f"(write ${{{name}:-}} to allow it to be empty)"
            )

        return _VAR.sub(sub, node)
    return node


def _format_error(err: ValidationError, data: dict[str, Any]) -> str:
    """One line per problem: a sensor or rule named by its id, the same problem of several once."""
    problems: dict[tuple[str, str, str], list[str]] = {}
    for e in err.errors():
        head, item, rest = "", "", ""
        for n, part in enumerate(e["loc"]):
            if n == 1 and isinstance(part, int) and head in ("sensors", "rules"):
                item = _item_name(data.get(head), part)
            elif isinstance(part, int):
                rest += f"[{part}]"
            elif n == 0:
                head = str(part)
            else:
                rest += f".{part}"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.setdefault((head, rest, msg), []).append(item)
    lines = []
    for (head, rest, msg), items in problems.items():
        key = f"{head}[{', '.join(items)}]{rest}" if any(items) else f"{head}{rest}"
        lines.append(f"{key}: {msg}" if key else msg)
    return "; ".join(lines)


def _item_name(items: Any, index: int) -> str:
    """A sensor's or rule's id as the file gives it, else its place in the list (from 0)."""
    try:
        ident = items[index]["id"]
    except (TypeError, LookupError):
        return str(index)
    return ident if isinstance(ident, str) and ident else str(index)


def parse_config(data: dict[str, Any], env: dict[str, str], source: str) -> Config:
    expanded = _expand(data, env, "")
    try:
        return Config.model_validate({**expanded, "source": source})
    except ValidationError as err:
        raise ConfigError(_format_error(err, expanded)) from None


def resolve_path(explicit: str | None, env: dict[str, str]) -> Path | None:
    """--config, else $GATEWAY_CONFIG, else ./gateway.toml, else None (defaults)."""
    if explicit:
        return Path(explicit)
    if env.get("GATEWAY_CONFIG"):
        return Path(env["GATEWAY_CONFIG"])
    default = Path("gateway.toml")
    return default if default.exists() else None


def load_config(explicit: str | None = None, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ) if env is None else env
    path = resolve_path(explicit, env)
    if path is None:
        return parse_config({}, env, "built-in defaults")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    try:
        return parse_config(data, env, str(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
