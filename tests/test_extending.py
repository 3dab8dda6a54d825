"""Extending without forking (the README's "Extending"): a consumer package from outside the repository,
named by the config, in a real gateway against mosquitto; the package is the README's own example."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from channels.layers import InMemoryChannelLayer
from websockets.asyncio.client import connect

from gateway.config import ConfigError, parse_config
from gateway.reload import merge
from protocols.worker import WorkerServer
from tests.conftest import (
    ROOT,
    GatewayFactory,
    GatewayProcess,
    Service,
    alert_event,
    http_get,
    publish,
    recv_json,
    recv_until,
    until,
    ws_connect,
)

VALVE = "zigbee2mqtt/main_valve/set"
LEAK = "zigbee2mqtt/washer_leak"

# The sensor and rule the README's example reacts to, as in gateway.example.toml.
LEAK_CONFIG = """
[[sensors]]
id = "washer-leak"
zone = "utility"
topic = "zigbee2mqtt/washer_leak"
format = "zigbee2mqtt"
field = "water_leak"

[[rules]]
id = "leak"
sensor = "washer-leak"
when = { equals = true }
clear = { equals = false }
severity = "critical"
message = "Water leak: {sensor.name}"
"""


def readme_example() -> tuple[str, str]:
    """The package and the config entries, exactly as the README's "Extending" section shows them."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Extending") :]
    section = section[: section.index("\n## ")]
    package = re.search(r"`valve_ext/__init__\.py`:\n\n```python\n(.*?)```", section, re.S)
    entries = re.search(r"```toml\n(.*?)```", section, re.S)
    assert package is not None and entries is not None, "the README's Extending section lost its example"
    return package.group(1), entries.group(1)


def install(tmp_path: Path, name: str, code: str) -> Path:
    """`code` as package `name` in a directory outside the repository; that directory is returned."""
    home = tmp_path / f"{name}-src"
    (home / name).mkdir(parents=True, exist_ok=True)
    (home / name / "__init__.py").write_text(code, encoding="utf-8")
    return home


def python_path(*dirs: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([*map(str, dirs), str(ROOT)])}


def extended(
    gateway_factory: GatewayFactory, tmp_path: Path, extra: str = "", name: str = "gw", **kwargs: str
) -> GatewayProcess:
    """A gateway (not started) with the README's package installed and its entries in the config."""
    package, entries = readme_example()
    gw = gateway_factory(start=False, extra=LEAK_CONFIG + entries + extra, name=name, **kwargs)
    gw.env.update(python_path(install(tmp_path, "valve_ext", package)))
    return gw


@asynccontextmanager
async def watching(port: int, *topics: str) -> AsyncIterator[asyncio.Queue[tuple[str, bytes]]]:
    """What the broker carries on `topics`, from the moment the subscription is granted."""
    loop = asyncio.get_running_loop()
    seen: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    subscribed = asyncio.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="extending-watcher")
    client.on_message = lambda c, u, m: loop.call_soon_threadsafe(seen.put_nowait, (m.topic, m.payload))
    client.on_subscribe = lambda *a: loop.call_soon_threadsafe(subscribed.set)
    client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        yield seen
    finally:
        client.loop_stop()
        client.disconnect()


def journal_of(gw: GatewayProcess) -> Path:
    return gw.workdir / "var" / "valve-journal.log"


def open_leak_alert(gw: GatewayProcess) -> dict[str, object]:
    status, body = http_get(f"{gw.url}/api/alerts?state=open", token="ops-secret-token")
    assert status == 200
    (alert,) = [a for a in body["alerts"] if a["rule"] == "leak"]
    return alert  # type: ignore[no-any-return]


async def test_the_readme_example_closes_the_valve_and_its_worker_keeps_the_journal(
    gateway_factory: GatewayFactory, mosquitto: Service, tmp_path: Path
) -> None:
    gw = extended(gateway_factory, tmp_path, mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    gw.start()
    assert gw.wait_healthy()["protocols"]["worker"]["up"] is True
    async with watching(mosquitto.port, VALVE) as valve:
        await publish(mosquitto.port, LEAK, '{"water_leak": true}')
        topic, payload = await asyncio.wait_for(valve.get(), 10)
    assert (topic, json.loads(payload)) == (VALVE, {"state": "OFF"})
    alert = open_leak_alert(gw)
    journal = journal_of(gw)
    line = await until(lambda: journal.exists() and journal.read_text(), what="the worker's journal line")
    assert line.endswith(f" valve closed: alert {alert['id']} on washer-leak\n")
    assert line.count("\n") == 1
    assert gw.stop() == 0


async def test_a_worker_process_alone_takes_the_jobs_the_others_hand_over_redis(
    gateway_factory: GatewayFactory, mosquitto: Service, redis_server: Service, tmp_path: Path
) -> None:
    broker, layer = f"mqtt://127.0.0.1:{mosquitto.port}", f"redis://127.0.0.1:{redis_server.port}/0"
    gw = extended(gateway_factory, tmp_path, mqtt_url=broker, layer=layer)
    gw.start(protocols=("web", "mqtt"))
    async with watching(mosquitto.port, VALVE) as valve:
        await publish(mosquitto.port, LEAK, '{"water_leak": true}')
        assert (await asyncio.wait_for(valve.get(), 10))[0] == VALVE
    # No worker runs anywhere yet: the web and MQTT process does not run one, and the job waits on Redis.
    assert "worker listening" not in gw.log
    assert not journal_of(gw).exists()

    worker = gateway_factory(mqtt_url=broker, layer=layer, start=False, name="worker")
    worker.config_path.write_text(gw.config_path.read_text())  # the same state_dir and database
    worker.env.update(gw.env)
    worker.start(protocols=("worker",), wait=False)
    await until(lambda: re.search(r"ready in [0-9.]+s: worker \(site test\)", worker.log), what="the worker")
    assert "worker listening on valve-journal" in worker.log
    journal = journal_of(gw)
    line = await until(lambda: journal.exists() and journal.read_text(), what="the worker's journal line")
    assert line.endswith(f" valve closed: alert {open_leak_alert(gw)['id']} on washer-leak\n")
    assert worker.stop() == 0
    assert gw.stop() == 0


# Routing: a wildcard filter's scopes start with their first message and never take a sensor's device,
# an exact topic's is made at start-up (a sensor's topic too); a WebSocket path goes before the gateway's own.
PROBE = """
import json

from channels.generic.websocket import AsyncWebsocketConsumer

from protocols.mqtt import MqttConsumer


class ValveStates(MqttConsumer):
    async def mqtt_message(self, event):
        reply = {"device": self.device, "lazy": self.scope["lazy"], "payload": event["payload"].decode()}
        await self.publish("probe/seen", json.dumps(reply))


class Echo(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=json.dumps({"echo": text_data, "route": self.scope["url_route"]}))


async def not_asgi(scope):
    pass


NOT_AN_APP = "valve"
"""

PROBE_ENTRIES = """
[[consumers]]
protocol = "mqtt"
topic = "zigbee2mqtt/+"
app = "probe_ext:ValveStates"

[[consumers]]
protocol = "websocket"
path = "/ws/echo/<str:name>/"
app = "probe_ext:Echo"

[[consumers]]
protocol = "mqtt"
topic = "sensors/boiler"
app = "probe_ext:ValveStates"
"""


async def test_mqtt_consumers_take_their_own_devices_and_websocket_paths_come_first(
    gateway_factory: GatewayFactory, mosquitto: Service, tmp_path: Path
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", start=False, extra=PROBE_ENTRIES)
    gw.env.update(python_path(install(tmp_path, "probe_ext", PROBE)))
    gw.start()
    async with watching(mosquitto.port, "probe/seen") as seen:
        await publish(mosquitto.port, "zigbee2mqtt/main_valve", '{"state":"ON"}')
        reply = json.loads((await asyncio.wait_for(seen.get(), 10))[1])
        assert reply == {"device": "zigbee2mqtt/main_valve", "lazy": True, "payload": '{"state":"ON"}'}
        # The front door's topic matches the filter too, yet stays the sensor's: it raises its alert.
        ws = await ws_connect(gw)
        await recv_json(ws)
        await publish(mosquitto.port, "zigbee2mqtt/front_door", '{"contact":false}')
        assert (await recv_until(ws, alert_event("raised")))["alert"]["sensor"] == "front-door"
        # An exact topic that is a sensor's: the entry's device (from start-up) and the sensor's both get it.
        await publish(mosquitto.port, "sensors/boiler", '{"temp":{"water":85}}')
        reply = json.loads((await asyncio.wait_for(seen.get(), 10))[1])
        assert reply == {"device": "consumers[2]", "lazy": False, "payload": '{"temp":{"water":85}}'}
        assert (await recv_until(ws, alert_event("raised")))["alert"]["sensor"] == "boiler"
        await ws.close()
        await publish(mosquitto.port, "zigbee2mqtt/main_valve", '{"state":"OFF"}')
        reply = json.loads((await asyncio.wait_for(seen.get(), 10))[1])
        assert reply["payload"] == '{"state":"OFF"}'
    async with connect(f"ws://127.0.0.1:{gw.http_port}/ws/echo/kitchen/", open_timeout=5) as echo:
        await echo.send("hello")
        answer = await recv_json(echo)
    assert answer == {"echo": "hello", "route": {"args": [], "kwargs": {"name": "kitchen"}}}
    assert gw.stop() == 0


BAD_APPS = [
    ("consumers", "valve_extx:ValveCloser", "cannot import 'valve_extx': No module named 'valve_extx'"),
    ("consumers", "probe_ext:ValveOpener", "'probe_ext' has no 'ValveOpener'"),
    ("consumers", "probe_ext:NOT_AN_APP", "'probe_ext:NOT_AN_APP' is not an ASGI application"),
    ("workers", "probe_ext:not_asgi", "'probe_ext:not_asgi' is not an ASGI application"),
]


@pytest.mark.parametrize(("section", "app", "says"), BAD_APPS)
def test_an_app_that_does_not_load_stops_run_and_check_with_exit_2_naming_the_key(
    gateway_factory: GatewayFactory, tmp_path: Path, section: str, app: str, says: str
) -> None:
    entry = {
        "consumers": f'[[consumers]]\nprotocol = "mqtt"\ntopic = "valve/state"\napp = "{app}"\n',
        "workers": f'[[workers]]\nchannel = "valve-journal"\napp = "{app}"\n',
    }[section]
    gw = gateway_factory(start=False, extra=entry)
    env = {**os.environ, **python_path(install(tmp_path, "probe_ext", PROBE))}
    key = f"{section}[0].app: {says}"
    for command in ("check", "run"):
        done = subprocess.run(
            [sys.executable, "-m", "gateway", command, "--config", str(gw.config_path)],
            capture_output=True,
            text=True,
            env=env,
            cwd=gw.workdir,
            timeout=30,
        )
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        if command == "check":
            assert re.search(rf"^apps +FAIL +{re.escape(key)}", done.stdout, re.M), done.stdout
            assert re.search(r"^database +ok", done.stdout, re.M)  # the other lines are all there
        else:
            assert f"gateway: config error: {gw.config_path}: {key}" in done.stderr


def test_check_says_the_apps_load(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    gw = extended(gateway_factory, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(gw.config_path)],
        capture_output=True,
        text=True,
        env={**os.environ, **gw.env},
        cwd=gw.workdir,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout
    assert re.search(r"^apps +ok +imported valve_ext:ValveCloser, valve_ext:ValveJournal$", done.stdout, re.M)


def test_a_worker_process_needs_workers(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(start=False)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(gw.config_path), "--protocol", "worker"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=gw.workdir,
        timeout=30,
    )
    assert done.returncode == 2
    assert "gateway: --protocol worker needs [[workers]] in the config" in done.stderr


@pytest.mark.parametrize(
    ("entries", "says"),
    [
        ([{"protocol": "mqtt", "app": "valve_ext:ValveCloser"}], "consumers[0]: protocol 'mqtt' needs topic"),
        ([{"protocol": "websocket", "app": "a:B"}], "consumers[0]: protocol 'websocket' needs path"),
        (
            [{"protocol": "telegram", "app": "a:B", "topic": "x"}],
            "consumers[0]: topic is not for protocol 'telegram'",
        ),
        ([{"protocol": "mqtt", "app": "valve_ext", "topic": "x"}], "consumers[0].app: must be"),
        ([{"protocol": "mqtt", "app": "a:B", "topic": "a/#/b"}], "consumers[0].topic: 'a/#/b' misuses a"),
        ([{"protocol": "amqp", "app": "a:B"}], "consumers[0].protocol: Input should be 'mqtt', 'websocket'"),
        ([{"protocol": "telegram", "app": "a:B"}] * 2, "consumers: one telegram entry at most"),
    ],
)
def test_consumer_entries_are_checked_with_the_key_named(entries: list[dict[str, str]], says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"consumers": entries}, {}, "test")
    assert str(raised.value).startswith(says)


def test_worker_entries_are_checked_with_the_key_named() -> None:
    with pytest.raises(ConfigError, match=r"^workers\[0\]\.channel: 'journal!x' is not a channel name"):
        parse_config({"workers": [{"channel": "journal!x", "app": "a:B"}]}, {}, "test")
    with pytest.raises(ConfigError, match=r"^workers\[0\]\.channel: 'gateway.mqtt-alerts': channels named"):
        parse_config({"workers": [{"channel": "gateway.mqtt-alerts", "app": "a:B"}]}, {}, "test")
    with pytest.raises(ConfigError, match=r"^workers: channel 'journal' is given twice"):
        parse_config({"workers": [{"channel": "journal", "app": "a:B"}] * 2}, {}, "test")
    config = parse_config(
        {"consumers": [{"protocol": "websocket", "app": "a:B", "path": "/ws/x/"}]}, {}, "test"
    )
    assert config.consumers[0].path == "ws/x/"  # routes match the path after its leading "/"


# The worker server in-process, on Channels' in-memory layer, with plain ASGI applications.


async def serve_worker(application: Any, **kwargs: float) -> tuple[InMemoryChannelLayer, asyncio.Event, Any]:
    layer, stop = InMemoryChannelLayer(), asyncio.Event()
    server = WorkerServer(application, ["jobs"], layer, **kwargs)
    return layer, stop, asyncio.ensure_future(server.serve(stop))


async def test_a_stopping_worker_finishes_the_job_in_hand() -> None:
    handled: list[int] = []

    async def application(scope: Any, receive: Any, send: Any) -> None:
        while True:
            job = await receive()
            stop.set()  # the stop comes while this job is in hand
            await asyncio.sleep(0.05)
            handled.append(job["n"])

    layer, stop, serving = await serve_worker(application)
    await layer.send("jobs", {"type": "job", "n": 1})
    await asyncio.wait_for(serving, 5)
    assert handled == [1]


async def test_a_stopping_worker_cancels_a_job_that_outlasts_the_drain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cancelled = asyncio.Event()

    async def application(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        stop.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    layer, stop, serving = await serve_worker(application, drain=0.1)
    await layer.send("jobs", {"type": "job"})
    await asyncio.wait_for(serving, 5)
    assert cancelled.is_set()
    assert "cancelled after 0s with messages in hand" in caplog.text


async def test_a_worker_instance_that_fails_starts_again_with_its_queue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def application(scope: Any, receive: Any, send: Any) -> None:
        while True:
            job = await receive()
            if job["n"] == 1:
                raise RuntimeError("job 1 fails")
            await handled.put((job["n"], scope))

    layer, stop, serving = await serve_worker(application)
    for n in (1, 2, 3):
        await layer.send("jobs", {"type": "job", "n": n})
    assert [(await asyncio.wait_for(handled.get(), 5))[0] for _ in range(2)] == [2, 3]
    assert "worker on channel jobs failed; it starts again" in caplog.text
    assert "RuntimeError: job 1 fails" in caplog.text
    stop.set()
    await asyncio.wait_for(serving, 5)


async def test_a_worker_goes_on_listening_after_a_message_without_a_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled: asyncio.Queue[int] = asyncio.Queue()
    states: list[bool] = []

    async def application(scope: Any, receive: Any, send: Any) -> None:
        while True:
            await handled.put((await receive())["n"])

    layer, stop = InMemoryChannelLayer(), asyncio.Event()
    server = WorkerServer(application, ["jobs"], layer, on_state=states.append)
    serving = asyncio.ensure_future(server.serve(stop))
    await layer.send("jobs", {"n": 0})
    await layer.send("jobs", {"type": "job", "n": 1})
    assert await asyncio.wait_for(handled.get(), 5) == 1
    assert "worker stopped listening (Worker received message with no type.)" in caplog.text
    assert states == [True, False, True]
    stop.set()
    await asyncio.wait_for(serving, 5)
    assert states[-1] is False


def test_a_reload_keeps_the_running_consumers_and_workers_and_says_they_need_a_restart() -> None:
    entry = {"protocol": "mqtt", "app": "valve_ext:ValveCloser", "topic": "zigbee2mqtt/main_valve"}
    old = parse_config({"consumers": [entry]}, {}, "test")
    worker = {"channel": "valve-journal", "app": "valve_ext:ValveJournal"}
    new = parse_config({"workers": [worker]}, {}, "test")
    merged, needs_restart = merge(old, new)
    assert (merged.consumers, merged.workers) == (old.consumers, [])
    assert needs_restart == ["consumers", "workers"]
