"""Fuzzing a real gateway: any WebSocket frame is answered and the socket stays usable; any MQTT
payload on any sensor, in any format, is handled or counted as bad input, never fails an instance."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import publish as mqtt_publish
from websockets.sync.client import connect

from tests.conftest import BASE_CONFIG, GatewayProcess, free_port, metric
from tests.test_alert_engine import FORMATS
from tests.test_formats import payloads

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
messages = st.builds(
    lambda kind, extra: json.dumps({"type": kind, **extra}),
    st.sampled_from(["ack", "resume", "ping", "dance", ""]),
    st.dictionaries(st.sampled_from(["alert", "after", "x"]), json_values, max_size=2),
)
frames = st.one_of(st.text(max_size=300), st.binary(max_size=300), messages, json_values.map(json.dumps))


def _gateway(workdir: Path, extra: str = "") -> Iterator[GatewayProcess]:
    http_port, mqtt_port = free_port(), free_port()
    text = BASE_CONFIG.format(
        site="fuzz",
        state_dir=workdir / "var",
        database="",
        layer="memory",
        http_port=http_port,
        mqtt_url="embedded",
        embedded_port=mqtt_port,
        protocol="auto",
    )
    (workdir / "gateway.toml").write_text(text + extra)
    gw = GatewayProcess(workdir, workdir / "gateway.toml", http_port, mqtt_port)
    gw.start()
    yield gw
    gw.kill()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from _gateway(tmp_path_factory.mktemp("fuzz"))


@settings(max_examples=150, deadline=None)
@given(frame=frames)
def test_any_frame_is_answered_and_the_socket_stays(gateway: GatewayProcess, frame: Any) -> None:
    with connect(gateway.ws_url + "?token=ops-secret-token", open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        ws.send(frame)
        ws.send('{"type":"ping"}')
        pongs, expected = 0, 2 if _is_ping(frame) else 1
        while pongs < expected:
            message = json.loads(ws.recv(timeout=5))
            assert message["type"] in ("error", "pong", "alert"), message
            if message["type"] == "error":
                assert isinstance(message["error"], str) and message["error"]
            pongs += message["type"] == "pong"
    assert gateway.proc is not None and gateway.proc.poll() is None


def _is_ping(frame: Any) -> bool:
    if not isinstance(frame, str):
        return False  # binary frames are refused whatever they hold
    try:
        message = json.loads(frame)
    except (ValueError, TypeError):
        return False
    return isinstance(message, dict) and message.get("type") == "ping"


# Every format and availability style (tests.test_alert_engine.FORMATS), and BASE_CONFIG's sensors.
TOPICS = [
    "zigbee2mqtt/front_door",
    "zigbee2mqtt/hall_door/availability",
    "sensors/boiler",
    "tele/heater/SENSOR",
    "tele/heater/LWT",
    "tele/plug/STATE",
    "garden/tank",
    "esp32/garage/temp",
]
HANDLED = ("ok", "bad_payload", "ignored", "app_error")


@pytest.fixture(scope="module")
def sensors_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from _gateway(tmp_path_factory.mktemp("fuzz-mqtt"), FORMATS)


def _handled(gw: GatewayProcess) -> float:
    return sum(metric(gw, f'gateway_mqtt_messages_total{{outcome="{o}"}}') for o in HANDLED)


@settings(max_examples=120, deadline=None)
@given(payload=payloads, topic=st.sampled_from(TOPICS))
def test_any_payload_on_any_sensor_never_fails_its_instance(
    sensors_gateway: GatewayProcess, payload: bytes, topic: str
) -> None:
    gw = sensors_gateway
    before = _handled(gw)
    mqtt_publish.single(topic, payload, qos=1, hostname="127.0.0.1", port=gw.mqtt_port)
    deadline = time.monotonic() + 10
    while _handled(gw) <= before:
        assert time.monotonic() < deadline, "the message was never handled"
        time.sleep(0.005)
    assert metric(gw, 'gateway_mqtt_messages_total{outcome="app_error"}') == 0
    assert gw.proc is not None and gw.proc.poll() is None
