"""Fuzzing the WebSocket protocol of a real gateway: any frame is answered and the socket stays usable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from tests.conftest import BASE_CONFIG, GatewayProcess, free_port

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


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
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
    (workdir / "gateway.toml").write_text(text)
    gw = GatewayProcess(workdir, workdir / "gateway.toml", http_port, mqtt_port)
    gw.start()
    yield gw
    gw.kill()


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
