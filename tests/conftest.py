"""Fixtures on real parts: private mosquitto and redis-server on free ports, the gateway as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.publish as mqtt_publish
import pytest
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent


# Ports for the servers a test starts: below the kernel's ephemeral range (32768-60999 on Linux),
# which outgoing connections draw from at any moment, and one slice per pytest-xdist worker, handed
# out in turn: a port this process gave a moment ago, or another worker's, is never given again
# before its server binds it.
_PORTS_FROM, _PORTS_PER_WORKER = 20000, 3000
_worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % 4
_next_port = _PORTS_FROM + _worker * _PORTS_PER_WORKER + (os.getpid() % 100) * 10


def free_port() -> int:
    global _next_port
    first = _PORTS_FROM + _worker * _PORTS_PER_WORKER
    for _ in range(_PORTS_PER_WORKER):
        port = _next_port
        _next_port = first + (_next_port + 1 - first) % _PORTS_PER_WORKER
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken, or still in TIME_WAIT: the next one
            return port
    raise RuntimeError("no free port in this worker's slice")


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Service:
    """A server process on a fixed port that a test can stop and start again."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path) -> None:
        self.name, self.argv, self.port, self.workdir = name, argv, port, workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.workdir / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, cwd=self.workdir)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _need(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if path is None:
        pytest.fail(f"{binary} is not installed: run the README's test command, which installs it")
    return path


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Service]:
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 10000\nset_tcp_nodelay true\n"
    )
    service = Service("mosquitto", [_need("mosquitto"), "-c", str(conf)], port, tmp_path)
    service.start()
    yield service
    service.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Service]:
    port = free_port()
    argv = [
        _need("redis-server"),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    service = Service("redis", argv, port, tmp_path)
    service.start()
    yield service
    service.stop()


BASE_CONFIG = """
[gateway]
site = "{site}"
state_dir = "{state_dir}"
database = "{database}"
channel_layer = "{layer}"

[http]
bind = "127.0.0.1:{http_port}"
allowed_origins = ["http://dashboard.example"]

[auth]
tokens = {{ ops = "ops-secret-token", kiosk = "kiosk-secret-token" }}

[mqtt]
url = "{mqtt_url}"
embedded_bind = "127.0.0.1:{embedded_port}"
client_id = "gateway-test-{site}"
protocol = "{protocol}"

[[sensors]]
id = "front-door"
name = "Front door"
zone = "house"
topic = "zigbee2mqtt/front_door"
format = "zigbee2mqtt"
field = "contact"

[[sensors]]
id = "boiler"
name = "Boiler"
zone = "cellar"
topic = "sensors/boiler"
format = "json"
field = "temp.water"

[[rules]]
id = "door-opened"
sensor = "front-door"
when = {{ equals = false }}
clear = {{ equals = true }}
severity = "critical"
message = "{{sensor.name}} opened"
notify = ["alerts.house"]
on_raise = [{{ topic = "zigbee2mqtt/siren/set", payload = '{{"state":"ON","alert":"{{alert.id}}"}}' }}]
on_clear = [{{ topic = "zigbee2mqtt/siren/set", payload = '{{"state":"OFF"}}' }}]

[[rules]]
id = "boiler-hot"
sensor = "boiler"
when = {{ above = 80 }}
clear = {{ below = 70 }}
severity = "warning"
message = "{{sensor.name}} at {{value}}"
"""


@dataclass
class GatewayProcess:
    workdir: Path
    config_path: Path
    http_port: int
    mqtt_port: int
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws/alerts/"

    @property
    def log(self) -> str:
        return (self.workdir / "gateway.log").read_text(errors="replace")

    def start(self, protocols: tuple[str, ...] = (), wait: bool = True) -> None:
        argv = [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path)]
        for protocol in protocols:
            argv += ["--protocol", protocol]
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        with open(self.workdir / "gateway.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=self.workdir, env=env)
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log}")
            status, body = http_get(f"{self.url}/healthz")
            last = (status, body)
            if status == 200:
                return body
            time.sleep(0.05)
        raise AssertionError(f"gateway not healthy after {timeout}s: {last}\n{self.log}")

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def http_get(url: str, token: str | None = None) -> tuple[int, Any]:
    return http_request("GET", url, token)


def metric(gw: GatewayProcess, line_start: str) -> float:
    """The sum of the /metrics samples whose line starts with `line_start` (0 when there is none)."""
    status, text = http_get(gw.url + "/metrics")
    assert status == 200
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def http_request(method: str, url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        body, status = err.read(), err.code
    except OSError:
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


GatewayFactory = Callable[..., GatewayProcess]


def run_store_script(tmp_path: Path, config: str, script: str) -> dict[str, Any]:
    """Run `script` in a Python of its own (as a restart or another process is) on the config
    `config` written to tmp_path; it fills the dict `out`, which comes back (JSON, str for the rest)."""
    path = tmp_path / "gateway.toml"
    path.write_text(config)
    script += "\nprint(json.dumps(out, default=str))\n"
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def run_web_script(script: str) -> dict[str, Any]:
    """Run `script` in a Python of its own (Twisted's reactor is one per process); the JSON object it
    printed last comes back."""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=50, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    started: list[GatewayProcess] = []

    def make(
        mqtt_url: str = "embedded",
        layer: str = "memory",
        protocol: str = "auto",
        database: str = "",
        site: str = "test",
        start: bool = True,
        extra: str = "",
        name: str = "gw",
    ) -> GatewayProcess:
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        http_port, embedded_port = free_port(), free_port()
        text = BASE_CONFIG.format(
            site=site,
            state_dir=workdir / "var",
            database=database,
            layer=layer,
            http_port=http_port,
            mqtt_url=mqtt_url,
            embedded_port=embedded_port,
            protocol=protocol,
        )
        config_path = workdir / "gateway.toml"
        config_path.write_text(text + extra)
        mqtt_port = int(mqtt_url.rsplit(":", 1)[1]) if mqtt_url != "embedded" else embedded_port
        gw = GatewayProcess(workdir, config_path, http_port, mqtt_port)
        started.append(gw)
        if start:
            gw.start()
        return gw

    yield make
    for gw in started:
        gw.kill()


def with_http(gateway_factory: GatewayFactory, *settings: str) -> GatewayProcess:
    """A started gateway with these lines (`key = value`) in its [http] section too."""
    gw = gateway_factory(start=False)
    config = gw.config_path.read_text()
    gw.config_path.write_text(config.replace("[http]\n", "[http]\n" + "".join(f"{s}\n" for s in settings), 1))
    gw.start()
    return gw


def split_pair(
    gateway_factory: GatewayFactory, broker_port: int, layer: str
) -> tuple[GatewayProcess, GatewayProcess]:
    """`--protocol web` and `--protocol mqtt` sharing one config and layer; web is healthy on return."""
    web = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{broker_port}", layer=layer, start=False)
    web.start(protocols=("web",))
    mqtt_only = gateway_factory(
        mqtt_url=f"mqtt://127.0.0.1:{broker_port}", layer=layer, start=False, name="mq"
    )
    mqtt_only.config_path.write_text(web.config_path.read_text())
    mqtt_only.start(protocols=("mqtt",), wait=False)
    return web, mqtt_only


async def publish(port: int, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> None:
    await asyncio.to_thread(
        mqtt_publish.single, topic, payload, qos=qos, retain=retain, hostname="127.0.0.1", port=port
    )


async def ws_connect(
    gw: GatewayProcess, token: str | None = "ops-secret-token", **kwargs: Any
) -> ClientConnection:
    url = gw.ws_url + (f"?token={token}" if token else "")
    return await connect(url, open_timeout=5, **kwargs)


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))  # type: ignore[no-any-return]


async def recv_until(
    ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    """The first message that satisfies `predicate`, skipping the others (sensor updates and such)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise TimeoutError("no matching WebSocket message in time")
        msg = await recv_json(ws, left)
        if predicate(msg):
            return msg


def alert_event(event: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("type") == "alert" and m.get("event") == event


async def until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """For what only a log file or the stand-in's record shows: check again on every tick."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout}s")
        await asyncio.sleep(0.05)


CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)


@pytest.fixture
async def browser() -> Any:
    """Debian's headless Chromium driven by Playwright (never a downloaded browser)."""
    from playwright.async_api import async_playwright

    if not HAVE_CHROMIUM:
        pytest.fail(f"{CHROMIUM} is missing: run the README's test command, which installs it")
    async with async_playwright() as driver:
        # --no-sandbox: the tests may run as root, where Chromium's sandbox refuses to start.
        chromium = await driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            await chromium.close()
