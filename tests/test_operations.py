"""Operations against real parts: health through a broker outage, /metrics, shutdown, shared subscriptions."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from tests.conftest import (
    ROOT,
    GatewayFactory,
    GatewayProcess,
    Service,
    alert_event,
    free_port,
    http_get,
    publish,
    recv_json,
    recv_until,
    split_pair,
    until,
    ws_connect,
)

DOOR, BOILER = "zigbee2mqtt/front_door", "sensors/boiler"


def scrape(gw: GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus-client's own parser."""
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_healthz_follows_a_broker_outage_and_dashboards_keep_working(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    ws = await ws_connect(gw)
    await recv_json(ws)

    mosquitto.stop()
    _, body = await until(lambda: (r := http_get(gw.url + "/healthz"))[0] == 503 and r, what="503")
    assert body["status"] == "degraded"
    assert body["protocols"]["mqtt"]["up"] is False and body["protocols"]["web"]["up"] is True
    await ws.send('{"type":"ping"}')
    assert await recv_json(ws) == {"type": "pong"}  # the dashboard side carries on

    mosquitto.start()
    _, body = await until(lambda: (r := http_get(gw.url + "/healthz"))[0] == 200 and r, what="200")
    assert body["protocols"]["mqtt"]["up"] is True
    await publish(mosquitto.port, DOOR, '{"contact": false}')
    raised = await recv_until(ws, alert_event("raised"), timeout=10)
    assert raised["alert"]["rule"] == "door-opened"
    await ws.close()


async def test_metrics_parse_and_move(gateway_factory: GatewayFactory, mosquitto: Service) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    before = scrape(gw)
    ws = await ws_connect(gw)
    await recv_json(ws)
    await publish(mosquitto.port, BOILER, '{"temp": {"water": 60}}')
    await publish(mosquitto.port, BOILER, "not json")
    await publish(mosquitto.port, DOOR, '{"contact": false}')
    await recv_until(ws, alert_event("raised"))
    await ws.send('{"type":"nonsense"}')
    await recv_until(ws, lambda m: m.get("type") == "error")

    after = scrape(gw)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("gateway_mqtt_messages_total", outcome="ok") == 2
    assert moved("gateway_mqtt_messages_total", outcome="bad_payload") == 1
    assert moved("gateway_alerts_total", event="raised") == 1
    assert moved("gateway_deliveries_total", protocol="websocket", outcome="ok") == 1
    assert moved("gateway_deliveries_total", protocol="mqtt", outcome="ok") == 1
    assert moved("gateway_bad_input_total", protocol="websocket", reason="message") == 1
    assert sample(after, "gateway_websocket_connections") == 1
    assert sample(after, "gateway_protocol_up", protocol="mqtt") == 1
    assert sample(after, "gateway_channel_layer_overflows_total") == 0
    # Trigger to delivery, per protocol: one alert, one observation each, well under a second here.
    for protocol in ("websocket", "mqtt"):
        count = moved("gateway_trigger_to_delivery_seconds_count", protocol=protocol)
        assert count == 1, protocol
        assert sample(after, "gateway_trigger_to_delivery_seconds_bucket", protocol=protocol, le="1.0") == 1
    await ws.close()


async def test_sigterm_closes_websockets_with_1001_and_exits_0(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    ws = await ws_connect(gw)
    await recv_json(ws)
    assert gw.proc is not None
    started = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 1001  # going away
    code = await asyncio.to_thread(gw.proc.wait, 10)
    assert code == 0 and time.monotonic() - started < 10
    assert "stopped in" in gw.log


async def test_shared_subscription_splits_1000_triggers_exactly_once(
    gateway_factory: GatewayFactory, mosquitto: Service, redis_server: Service
) -> None:
    layer = f"redis://127.0.0.1:{redis_server.port}/0"
    procs = []
    for name in ("a", "b"):
        gw = gateway_factory(
            mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", layer=layer, protocol="5", name=name, start=False
        )
        # One site, two MQTT clients: each needs a client id (and so a session) of its own.
        text = gw.config_path.read_text().replace(
            'client_id = "gateway-test-test"', f'client_id = "gateway-test-{name}"\nshared_group = "sensors"'
        )
        assert f"gateway-test-{name}" in text
        gw.config_path.write_text(text)
        gw.start()
        procs.append(gw)
    assert all("shared as $share/sensors/…" in gw.log for gw in procs)

    before = [sample(scrape(gw), "gateway_mqtt_messages_total", outcome="ok") for gw in procs]
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="load", protocol=paho.MQTTv5)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        infos = [client.publish(BOILER, f'{{"temp": {{"water": {i % 50}}}}}', qos=1) for i in range(1000)]
        for info in infos:
            await asyncio.to_thread(info.wait_for_publish, 10)
    finally:
        client.loop_stop()
        client.disconnect()

    def handled() -> list[float]:
        return [
            sample(scrape(gw), "gateway_mqtt_messages_total", outcome="ok") - b
            for gw, b in zip(procs, before, strict=True)
        ]

    counts = await until(lambda: (c := handled()) and sum(c) >= 1000 and c, timeout=30, what="1000 handled")
    assert sum(counts) == 1000, counts
    assert min(counts) > 100, f"not split between the two processes: {counts}"
    # A moment later still exactly 1000: nothing handled twice (shared or redelivered).
    await publish(mosquitto.port, BOILER, '{"temp": {"water": 1}}')
    final = await until(lambda: (c := handled()) and sum(c) >= 1001 and c, what="the marker")
    assert sum(final) == 1001, final


async def test_split_processes_over_redis_sentinel(
    gateway_factory: GatewayFactory, mosquitto: Service, redis_server: Service, tmp_path: Path
) -> None:
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # Sentinel rewrites its file: it must be writable
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\nsentinel monitor main 127.0.0.1 {redis_server.port} 1\n"
        "sentinel down-after-milliseconds main 2000\n"
    )
    sentinel = Service("sentinel", [str(redis_server.argv[0]), str(conf), "--sentinel"], port, tmp_path)
    sentinel.start()
    try:
        layer = f"redis+sentinel://127.0.0.1:{port}/main/0"
        config = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", layer=layer, start=False)
        config = config.config_path
        checked = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "check", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert f"redis+sentinel://127.0.0.1:{port}/main/0 answers PING" in checked.stdout
        web, mqtt_only = split_pair(gateway_factory, mosquitto.port, layer)
        ws = await ws_connect(web)
        await recv_json(ws)
        await until(lambda: "ready in" in mqtt_only.log, what="the MQTT process")
        await publish(mosquitto.port, DOOR, '{"contact": false}')
        raised = await recv_until(ws, alert_event("raised"), timeout=10)
        assert raised["alert"]["rule"] == "door-opened"
        await ws.close()
    finally:
        sentinel.stop()


PULSE = """
[[sensors]]
id = "pulse"
name = "Pulse"
zone = "house"
topic = "sensors/pulse"
format = "plain"
expire_after = "3s"

[[rules]]
id = "pulse-silent"
sensor = "pulse"
when = { offline = true }
severity = "warning"
message = "{sensor.name} went silent"
"""


async def test_processes_sharing_a_subscription_keep_one_rule_state(
    gateway_factory: GatewayFactory, mosquitto: Service, redis_server: Service, tmp_path: Path
) -> None:
    layer = f"redis://127.0.0.1:{redis_server.port}/0"
    database = f"sqlite:///{tmp_path}/shared.sqlite3"  # one box: both processes on one file
    procs = []
    for name in ("a", "b"):
        gw = gateway_factory(
            mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}",
            layer=layer,
            protocol="5",
            database=database,
            name=name,
            start=False,
            extra=PULSE,
        )
        text = gw.config_path.read_text().replace(
            'client_id = "gateway-test-test"', f'client_id = "gateway-test-{name}"\nshared_group = "sensors"'
        )
        gw.config_path.write_text(text)
        gw.start()
        procs.append(gw)
    ws = await ws_connect(procs[0])
    await recv_json(ws)
    heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="watcher")
    watcher.on_message = lambda c, u, m: loop.call_soon_threadsafe(heard.put_nowait, json.loads(m.payload))
    subscribed = asyncio.Event()
    watcher.on_subscribe = lambda *a: loop.call_soon_threadsafe(subscribed.set)
    watcher.on_connect = lambda c, *a: c.subscribe("gateway/test/alerts", 1)
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.loop_start()
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        await _alternate_and_go_silent(mosquitto, procs, ws, heard)
    finally:
        watcher.loop_stop()
        watcher.disconnect()
        await ws.close()


async def _alternate_and_go_silent(
    mosquitto: Service, procs: list[GatewayProcess], ws: Any, heard: asyncio.Queue[dict[str, Any]]
) -> None:
    # Opened in one process, closed in the other (the broker takes turns): each raise is cleared, once.
    raised = set()
    for _ in range(6):
        await publish(mosquitto.port, DOOR, '{"contact": false}')
        raised.add((await recv_until(ws, alert_event("raised"), timeout=10))["alert"]["id"])
        await publish(mosquitto.port, DOOR, '{"contact": true}')
        cleared = await recv_until(ws, alert_event("cleared"), timeout=10)
        assert cleared["alert"]["id"] in raised
    assert len(raised) == 6
    # A process logs a raise after its last group send: a client may see the event first.
    await until(
        lambda: sum(gw.log.count("raised: Front door opened") for gw in procs) == 6, what="6 raises logged"
    )
    logs = [gw.log for gw in procs]
    assert all("raised: Front door opened" in log or "cleared: Front door" in log for log in logs)

    # A sensor every 1.6 s, so each process alone sees 3.2 s gaps, past its 3 s expire_after; with
    # what its peer tells it, it sees every reading. (A sensor never heard goes silent 3 s after
    # start-up: the processes' start and the door part above must take less than that.)
    for i in range(4):
        await publish(mosquitto.port, "sensors/pulse", str(i))
        await asyncio.sleep(1.6)  # the sensor's pace, not a wait for an event
    assert not any("Pulse went silent" in gw.log for gw in procs)
    silent = await recv_until(
        ws, lambda m: m.get("event") == "raised" and m["alert"]["rule"] == "pulse-silent"
    )
    assert silent["alert"]["message"] == "Pulse went silent"
    await until(lambda: sum(gw.log.count("raised: Pulse went silent") for gw in procs) == 1, what="one")
    status, body = http_get(procs[0].url + "/api/alerts?state=open", token="ops-secret-token")
    assert status == 200 and [a["rule"] for a in body["alerts"]] == ["pulse-silent"]

    # gateway/<site>/alerts carries each event once, though both processes publish.
    seqs = []
    while not seqs or seqs[-1] != silent["seq"]:
        seqs.append((await asyncio.wait_for(heard.get(), 10))["seq"])
    assert len(seqs) == 13 and len(set(seqs)) == 13, seqs


async def test_a_telegram_process_without_a_token_says_so(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(start=False)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "run", "--config", str(gw.config_path), "--protocol", "telegram"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2
    assert "--protocol telegram needs telegram.token in the config" in done.stderr


MIGRATION_CHECK = """
import sys
from django.db import connection
from gateway import settings
from gateway.config import parse_config

settings.setup(parse_config({"gateway": {"state_dir": sys.argv[1]}}, {}, "test"))
print(settings.pending_migrations(connection), "django.db.migrations.executor" in sys.modules)
if sys.argv[2] == "forget":
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM django_migrations WHERE name = '0002_telegram'")
    print(settings.pending_migrations(connection))
"""


def test_migrations_load_only_when_the_schema_is_behind(tmp_path: Path) -> None:
    def start(mode: str) -> list[str]:
        argv = [sys.executable, "-c", MIGRATION_CHECK, str(tmp_path), mode]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
        return done.stdout.split()

    # A new database is migrated; a start on an up-to-date one never loads the migration framework.
    assert start("new") == ["False", "True"]
    assert start("again") == ["False", "False"]
    # A migration missing from django_migrations (an upgrade shipped one) is noticed.
    assert start("forget") == ["False", "False", "True"]


def python_lines(code: str, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> list[str]:
    """What `python -c code args` prints, line by line (it must exit with 0)."""
    argv = [sys.executable, "-c", code, *args]
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.splitlines()


SQL_SCRIPT = """
import sys
from django.db import connection
from gateway import settings
from gateway.config import parse_config

settings.setup(parse_config({"gateway": {"state_dir": sys.argv[1]}}, {}, "test"))
print("sqlparse.engine" in sys.modules, *connection.ops.prepare_sql_script("SELECT 1; -- one\\nSELECT 2"))
"""


def test_sqlparse_loads_when_django_first_splits_sql(tmp_path: Path) -> None:
    python_lines(SQL_SCRIPT, str(tmp_path))  # a new database: migrated
    assert python_lines(SQL_SCRIPT, str(tmp_path)) == ["False SELECT 1; SELECT 2"]


def test_a_web_process_leaves_pyopenssl_out() -> None:
    # daphne listens on plain TCP: Twisted and autobahn take their no-TLS paths, 5 MiB less.
    code = (
        "import sys; from gateway.server import event_loop; event_loop(['web']);"
        "import autobahn.twisted.websocket, twisted.internet.tcp, twisted.internet.ssl as s;"
        "print(sys.modules['OpenSSL'], 'cryptography.x509' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0 and "import of OpenSSL halted" in done.stderr  # twisted.internet.ssl
    code = code.replace(", twisted.internet.ssl as s", "")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["None", "False"]


def test_a_web_process_leaves_what_only_wamp_uses_out() -> None:
    # daphne serves WebSockets; autobahn's other protocol, WAMP, brings cryptography, argon2, click
    # and cbor2 (9 MiB). Still there for whoever asks: after the start, by autobahn's names or their own.
    wamp = ("cryptography", "argon2", "click", "cbor2", "autobahn.twisted.wamp")
    code = (
        "import sys; from gateway.server import event_loop; event_loop(['web']);"
        "import autobahn.twisted.websocket, daphne.server;"
        f"print(*[m in sys.modules for m in {wamp!r}]);"
        "import click, cbor2; from autobahn.twisted import ApplicationSession, WebSocketServerProtocol;"
        "print(ApplicationSession.__name__, WebSocketServerProtocol is "
        "autobahn.twisted.websocket.WebSocketServerProtocol, 'cryptography' in sys.modules)"
    )
    assert python_lines(code) == ["False False False False False", "ApplicationSession True True"]


def test_a_web_process_takes_autobahns_native_validator_and_masker_without_their_build_step() -> None:
    # autobahn's NVX modules parse C declarations with pycparser at every import (1.5 MiB), for a
    # build step; the gateway's validator and masker come from the compiled modules alone.
    code = (
        "import sys; from gateway.server import event_loop; event_loop(['web']);"
        "import autobahn.websocket.protocol as protocol, daphne.server;"
        "print('pycparser' in sys.modules, 'cffi.api' in sys.modules,"
        " protocol.Utf8Validator.__module__, protocol.create_xor_masker.__module__);"
        "print(protocol.Utf8Validator().validate('gr\u00fc\u00df'.encode()[:-1]))"
    )
    assert python_lines(code) == [
        "False False protocols._autobahn protocols._autobahn",
        "(True, False, 5, 5)",  # valid so far, in the middle of a code point, 5 bytes read
    ]


def test_a_redis_layer_leaves_cryptography_out() -> None:
    # channels_redis takes cryptography's Fernet when installed, for an encryption the gateway never
    # sets: 6 MiB. Still there for whoever asks afterwards.
    code = (
        "import sys; import gateway.layers.redis;"
        "print('cryptography.hazmat.bindings._rust' in sys.modules);"
        "from cryptography.fernet import Fernet; print(Fernet.__name__)"
    )
    assert python_lines(code) == ["False", "Fernet"]


PACKAGE_ON_USE = """
import sys
from gateway.ops.process import package_on_use

package_on_use("lazy")
import lazy.sub
print("VALUE" in vars(lazy), "lazy.heavy" in sys.modules)
from lazy import other
print(other.NAME, "lazy.heavy" in sys.modules)
print(lazy.VALUE, "lazy.heavy" in sys.modules, lazy.sub.NAME, lazy.other is other)
"""


def test_a_package_on_use_runs_its_init_when_one_of_its_names_is_first_used(tmp_path: Path) -> None:
    package = tmp_path / "lazy"
    package.mkdir()
    (package / "__init__.py").write_text("from lazy import heavy\nVALUE = heavy.VALUE\n")
    (package / "heavy.py").write_text("VALUE = 42\n")
    (package / "sub.py").write_text("NAME = 'sub'\n")
    (package / "other.py").write_text("NAME = 'other'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    lines = python_lines(PACKAGE_ON_USE, cwd=tmp_path, env=env)
    assert lines == ["False False", "other False", "42 True sub True"]


def test_metrics_leave_prometheus_exposition_out_until_scraped() -> None:
    code = (
        "import sys; import gateway.server; from gateway.ops import metrics;"
        "print('prometheus_client.exposition' in sys.modules);"
        "metrics.alerts.labels('raised').inc(); text, kind = metrics.exposition();"
        "print(kind.split(';')[0], b'gateway_alerts_total{event=\"raised\"} 1.0' in text)"
    )
    assert python_lines(code) == ["False", "text/plain True"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_state_dir_and_the_database_are_private_outside_systemd(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(start=False)
    state = gw.workdir / "var"
    old = os.umask(0o022)  # a login shell's: 0755 directories and 0644 files unless the code asks
    try:
        gw.start()
        await publish(gw.mqtt_port, "zigbee2mqtt/front_door", '{"contact": false}')  # a write: -wal, -shm
        db = state / "gateway.sqlite3"
        await until(lambda: (state / "gateway.sqlite3-wal").exists(), what="the WAL file")
        files = [db, state / "gateway.sqlite3-wal", state / "gateway.sqlite3-shm", state / "secret_key"]
        assert {path.name: oct(_mode(path)) for path in [state, *files]} == {
            "var": "0o700",
            **{path.name: "0o600" for path in files},
        }
        # A database an older version left readable to all is made private at the next start.
        gw.stop()
        db.chmod(0o644)
        gw.start()
        assert oct(_mode(db)) == "0o600"
    finally:
        os.umask(old)
