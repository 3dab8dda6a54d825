"""Silences and the mode over HTTP (`/api/silences`, `/api/mode`) and `/ws/alerts/` (SPEC §10),
against one gateway process for the module (modes on), as a script and a dashboard would use them."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    BASE_CONFIG,
    GatewayFactory,
    GatewayProcess,
    Service,
    alert_event,
    free_port,
    metric,
    publish,
    recv_json,
    recv_until,
    until,
    ws_connect,
)
from tests.test_security import TOKENS_LINE, _login, request

DOOR = "zigbee2mqtt/front_door"
SILENCE_KEYS = {"id", "sensor", "zone", "rule", "severity", "comment", "created_by", "created_at", "ends_at"}
MODES = ["home", "away", "night"]
OPS = "ops-secret-token"


def modes_gateway(workdir: Path, extra: str = "") -> GatewayProcess:
    """A started gateway on BASE_CONFIG with modes home, away and night (home at first)."""
    http_port, mqtt_port = free_port(), free_port()
    text = BASE_CONFIG.format(
        site="test",
        state_dir=workdir / "var",
        database="",
        layer="memory",
        http_port=http_port,
        mqtt_url="embedded",
        embedded_port=mqtt_port,
        protocol="auto",
    )
    modes = 'modes = ["home", "away", "night"]\nmode = "home"\n'
    (workdir / "gateway.toml").write_text(text.replace("[gateway]\n", "[gateway]\n" + modes, 1) + extra)
    gateway = GatewayProcess(workdir, workdir / "gateway.toml", http_port, mqtt_port)
    gateway.start()
    return gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = modes_gateway(tmp_path_factory.mktemp("silences"))
    yield gateway
    gateway.kill()


def api(
    gw: GatewayProcess, method: str, path: str, body: Any = None, token: str | None = OPS, **headers: str
) -> tuple[int, Any]:
    """A call as a script makes it: Bearer token, JSON body (bytes and str are sent as they are)."""
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if isinstance(body, bytes | str) or body is None:
        data = body.encode() if isinstance(body, str) else body or b""
    else:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=5)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        status, text = response.status, response.read().decode(errors="replace")
    finally:
        conn.close()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def test_silence_made_over_http_holds_an_alert_and_its_end_notifies_it(gw: GatewayProcess) -> None:
    ws = await ws_connect(gw)
    await recv_json(ws)  # hello
    status, body = api(
        gw, "POST", "/api/silences", {"sensor": "front-door", "for": "1h", "comment": "fixing"}
    )
    assert status == 201, body
    silence = body["silence"]
    assert set(silence) == SILENCE_KEYS
    assert silence["sensor"] == "front-door" and silence["zone"] is None and silence["rule"] is None
    assert silence["comment"] == "fixing" and silence["created_by"] == "api:ops"
    assert _epoch(silence["ends_at"]) - _epoch(silence["created_at"]) == pytest.approx(3600, abs=1)
    announced = await recv_until(ws, lambda m: m["type"] == "silence")
    assert announced == {"type": "silence", "event": "created", "silence": silence}
    assert api(gw, "GET", "/api/silences") == (200, {"silences": [silence]})

    # The door opens while muted: the alert is there, marked with the silence.
    await publish(gw.mqtt_port, DOOR, '{"contact": false}')
    raised = await recv_until(ws, alert_event("raised"))
    assert raised["alert"]["silenced"] == silence["id"]

    status, body = api(gw, "DELETE", f"/api/silences/{silence['id']}")
    assert status == 200 and body["silence"]["id"] == silence["id"]
    ended = await recv_until(ws, lambda m: m["type"] == "silence")
    assert ended["event"] == "ended" and ended["silence"]["id"] == silence["id"]
    # Still active and unacknowledged: notified now, as if raised now.
    unsilenced = await recv_until(ws, alert_event("unsilenced"))
    assert unsilenced["alert"]["id"] == raised["alert"]["id"] and unsilenced["alert"]["silenced"] is None
    assert api(gw, "GET", "/api/silences") == (200, {"silences": []})
    status, body = api(gw, "DELETE", f"/api/silences/{silence['id']}")
    assert status == 404 and "no active silence" in body["error"]
    assert api(gw, "DELETE", "/api/silences/nosuchid")[0] == 404

    await publish(gw.mqtt_port, DOOR, '{"contact": true}')
    await recv_until(ws, alert_event("cleared"))
    await ws.close()


BAD_SILENCES = [
    ("not json", "must be JSON"),
    (b"\xff\xfe\x00garbage", "must be JSON"),
    ("[" * 5000 + "]" * 5000, "must be JSON"),
    ("", "must be JSON"),
    ([1, 2], "is an object"),
    ("null", "is an object"),
    ({}, "at least one of sensor, zone, rule, severity"),
    ({"zone": "house"}, "'for' is required"),
    ({"zone": "house", "for": "8d"}, "at most 7d"),
    ({"zone": "house", "for": "soon"}, "for:"),
    ({"zone": "house", "for": "-1h"}, "for:"),
    ({"zone": 5, "for": "1h"}, "zone must be a non-empty string"),
    ({"severity": "huge", "for": "1h"}, "severity must be one of"),
    ({"zone": "house", "for": "1h", "until": "never"}, "unknown key 'until'"),
    ({"zone": "house", "for": "1h", "comment": "x" * 600}, "longer than 500"),
    ({"sensor": "s" * 129, "for": "1h"}, "sensor is longer than 128 characters"),
]


def test_bad_silence_requests_get_400_change_nothing_and_are_counted(gw: GatewayProcess) -> None:
    counted = 'gateway_bad_input_total{protocol="http",reason="silence"}'
    before = metric(gw, counted)
    for body, expected in BAD_SILENCES:
        status, answer = api(gw, "POST", "/api/silences", body)
        assert status == 400 and expected in answer["error"], (str(body)[:40], answer)
    assert metric(gw, counted) == before + len(BAD_SILENCES)
    assert api(gw, "GET", "/api/silences") == (200, {"silences": []})
    # Over the size every POST may have: refused before it is read.
    status, _ = api(gw, "POST", "/api/silences", {"zone": "house", "for": "1h", "comment": "x" * 70_000})
    assert status == 413
    assert api(gw, "GET", "/api/silences") == (200, {"silences": []})
    assert gw.proc is not None and gw.proc.poll() is None


def test_without_a_valid_token_401_and_nothing_changes(gw: GatewayProcess) -> None:
    calls = [
        ("GET", "/api/silences", None),
        ("POST", "/api/silences", {"zone": "house", "for": "1h"}),
        ("DELETE", "/api/silences/abc", None),
        ("GET", "/api/mode", None),
        ("POST", "/api/mode", {"mode": "night"}),
    ]
    for method, path, body in calls:
        status, answer = api(gw, method, path, body, token=None)
        assert (status, answer) == (401, {"error": "a valid token is required"}), (method, path)
    # One wrong token (the brake allows a few before it slows this address down).
    status, _ = api(gw, "POST", "/api/silences", {"zone": "house", "for": "1h"}, token="wrong-token-value")
    assert status == 401
    assert api(gw, "GET", "/api/silences") == (200, {"silences": []})
    assert api(gw, "GET", "/api/mode")[1]["mode"] != "night"


def test_the_dashboard_cookie_needs_the_csrf_token_as_for_ack(gw: GatewayProcess) -> None:
    cookies = _login(gw)
    session = f"gateway_session={cookies['gateway_session']}"
    body = json.dumps({"zone": "cellar", "for": "10m"})
    status, _, text = request(gw, "POST", "/api/silences", body, {"Cookie": session})
    assert status == 403 and "CSRF" in text
    status, _, _ = request(gw, "POST", "/api/mode", '{"mode":"night"}', {"Cookie": session})
    assert status == 403
    both = {
        "Cookie": f"{session}; csrftoken={cookies['csrftoken']}",
        "X-CSRFToken": cookies["csrftoken"],
        "Origin": gw.url,
    }
    status, _, text = request(gw, "POST", "/api/silences", body, both)
    assert status == 201, text
    made = json.loads(text)["silence"]
    status, _, _ = request(gw, "DELETE", f"/api/silences/{made['id']}", "", {"Cookie": session})
    assert status == 403
    assert [s["id"] for s in api(gw, "GET", "/api/silences")[1]["silences"]] == [made["id"]]
    status, _, _ = request(gw, "DELETE", f"/api/silences/{made['id']}", "", both)
    assert status == 200
    assert api(gw, "GET", "/api/silences") == (200, {"silences": []})


async def test_mode_over_http_is_announced_and_unknown_ones_are_refused(gw: GatewayProcess) -> None:
    status, mode = api(gw, "GET", "/api/mode")
    assert status == 200 and set(mode) == {"mode", "modes", "changed_by", "changed_at", "next_switch"}
    assert mode["modes"] == MODES and mode["mode"] in MODES
    ws = await ws_connect(gw)
    await recv_json(ws)
    target = "night" if mode["mode"] != "night" else "away"
    status, changed = api(gw, "POST", "/api/mode", {"mode": target})
    assert status == 200 and changed["mode"] == target and changed["changed_by"] == "api:ops"
    assert changed["modes"] == MODES and changed["changed_at"]
    frame = await recv_until(ws, lambda m: m["type"] == "mode")
    assert frame == {"type": "mode", **changed}
    assert api(gw, "GET", "/api/mode") == (200, changed)

    counted = 'gateway_bad_input_total{protocol="http",reason="mode"}'
    before = metric(gw, counted)
    for body, expected in [
        ({"mode": "party"}, "unknown mode 'party' (known: home, away, night)"),
        ({"mode": 3}, "unknown mode"),
        ({"mode": None}, "unknown mode"),
        ({}, "must be JSON such as"),
        (["away"], "must be JSON such as"),
        ("away", "must be JSON such as"),
    ]:
        status, answer = api(gw, "POST", "/api/mode", body)
        assert status == 400 and expected in answer["error"] and answer["modes"] == MODES, (body, answer)
    assert metric(gw, counted) == before + 6
    assert api(gw, "GET", "/api/mode") == (200, changed)
    await ws.close()


async def test_websocket_silence_unsilence_and_mode_reach_every_socket(gw: GatewayProcess) -> None:
    mine, other = await ws_connect(gw), await ws_connect(gw, token="kiosk-secret-token")
    hello = await recv_json(mine)
    assert {"silences", "mode", "modes"} <= set(hello)
    assert hello["silences"] == [] and hello["modes"] == MODES and hello["mode"] in MODES
    await recv_json(other)

    request_ = {"type": "silence", "zone": "cellar", "rule": "boiler-hot", "for": "2h", "comment": "service"}
    await mine.send(json.dumps(request_))
    created = [await recv_until(ws, lambda m: m["type"] == "silence") for ws in (mine, other)]
    assert created[0] == created[1] and created[0]["event"] == "created"
    silence = created[0]["silence"]
    assert silence["zone"] == "cellar" and silence["rule"] == "boiler-hot" and silence["sensor"] is None
    assert silence["created_by"] == "web:ops" and silence["comment"] == "service"
    assert api(gw, "GET", "/api/silences")[1]["silences"] == [silence]
    late = await ws_connect(gw)
    assert (await recv_json(late))["silences"] == [silence]  # a screen opened now shows it at once
    await late.close()

    await other.send(json.dumps({"type": "unsilence", "silence": silence["id"]}))
    ended = [await recv_until(ws, lambda m: m["type"] == "silence") for ws in (mine, other)]
    assert all(m["event"] == "ended" and m["silence"]["id"] == silence["id"] for m in ended)
    assert api(gw, "GET", "/api/silences") == (200, {"silences": []})

    target = "away" if hello["mode"] != "away" else "home"
    await other.send(json.dumps({"type": "mode", "mode": target}))
    frames = [await recv_until(ws, lambda m: m["type"] == "mode") for ws in (mine, other)]
    assert frames[0] == frames[1]
    assert frames[0]["mode"] == target and frames[0]["changed_by"] == "web:kiosk"
    assert frames[0]["modes"] == MODES
    assert api(gw, "GET", "/api/mode")[1]["mode"] == target
    await mine.close()
    await other.close()


async def test_bad_websocket_requests_get_an_error_and_the_socket_stays(gw: GatewayProcess) -> None:
    ws = await ws_connect(gw)
    await recv_json(ws)
    counted = 'gateway_bad_input_total{protocol="websocket",reason="message"}'
    before = metric(gw, counted)
    bad = [
        ({"type": "silence"}, "silence: give at least one of"),
        ({"type": "silence", "zone": "house"}, "'for' is required"),
        ({"type": "silence", "zone": "house", "for": "30d"}, "at most 7d"),
        ({"type": "silence", "zone": ["house"], "for": "1h"}, "zone must be a non-empty string"),
        ({"type": "silence", "zone": "house", "for": "1h", "alert": "x"}, "unknown key 'alert'"),
        ({"type": "unsilence"}, 'unsilence needs "silence"'),
        ({"type": "unsilence", "silence": 42}, 'unsilence needs "silence"'),
        ({"type": "unsilence", "silence": "nosuchid"}, "no active silence 'nosuchid'"),
        ({"type": "mode", "mode": "party"}, "mode: unknown mode 'party' (known: home, away, night)"),
        ({"type": "mode"}, "unknown mode"),
    ]
    for message, expected in bad:
        await ws.send(json.dumps(message))
        reply = await recv_until(ws, lambda m: m["type"] == "error")
        assert expected in reply["error"], (message, reply)
    assert metric(gw, counted) == before + len(bad)
    assert api(gw, "GET", "/api/silences") == (200, {"silences": []})
    await ws.send('{"type":"ping"}')
    assert (await recv_until(ws, lambda m: m["type"] == "pong"))["type"] == "pong"
    await ws.close()


async def test_split_processes_hear_each_others_changes_over_redis(
    gateway_factory: GatewayFactory, mosquitto: Service, redis_server: Service
) -> None:
    """`--protocol web` and `--protocol mqtt` on Redis: what is changed on one reaches every dashboard."""
    broker, layer = f"mqtt://127.0.0.1:{mosquitto.port}", f"redis://127.0.0.1:{redis_server.port}/0"
    web = gateway_factory(mqtt_url=broker, layer=layer, start=False)
    config = web.config_path.read_text().replace("[gateway]\n", '[gateway]\nmodes = ["home", "away"]\n', 1)
    web.config_path.write_text(config)
    web.start(protocols=("web",))
    mqtt_only = gateway_factory(mqtt_url=broker, layer=layer, start=False, name="mq")
    mqtt_only.config_path.write_text(config)
    mqtt_only.start(protocols=("mqtt",), wait=False)
    first, second = await ws_connect(web), await ws_connect(web, token="kiosk-secret-token")
    for ws in (first, second):
        hello = await recv_json(ws)
        assert (hello["mode"], hello["modes"], hello["silences"]) == ("home", ["home", "away"], [])
    await until(lambda: "ready in" in mqtt_only.log, what="the MQTT process")

    status, body = api(web, "POST", "/api/silences", {"sensor": "front-door", "for": "1h"})
    assert status == 201
    for ws in (first, second):
        created = await recv_until(ws, lambda m: m["type"] == "silence")
        assert created == {"type": "silence", "event": "created", "silence": body["silence"]}
    await first.send(json.dumps({"type": "mode", "mode": "away"}))
    for ws in (first, second):
        mode = await recv_until(ws, lambda m: m["type"] == "mode")
        assert (mode["mode"], mode["changed_by"]) == ("away", "web:ops")
    await second.send(json.dumps({"type": "unsilence", "silence": body["silence"]["id"]}))
    for ws in (first, second):
        ended = await recv_until(ws, lambda m: m["type"] == "silence")
        assert ended["event"] == "ended" and ended["silence"]["id"] == body["silence"]["id"]
    assert api(web, "GET", "/api/mode")[1]["mode"] == "away"
    assert api(web, "GET", "/api/silences")[1] == {"silences": []}
    await first.close()
    await second.close()


async def test_without_tokens_changes_name_the_protocol_alone(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(start=False)
    gw.config_path.write_text(gw.config_path.read_text().replace(TOKENS_LINE, ""))
    gw.start()
    status, body = api(gw, "POST", "/api/silences", {"zone": "house", "for": "5m"}, token=None)
    assert status == 201 and body["silence"]["created_by"] == "api"
    ws = await ws_connect(gw, token=None)
    hello = await recv_json(ws)
    assert hello["silences"] == [body["silence"]] and (hello["mode"], hello["modes"]) == ("", [])
    await ws.send(json.dumps({"type": "unsilence", "silence": body["silence"]["id"]}))
    await recv_until(ws, lambda m: m["type"] == "silence")
    await ws.send(json.dumps({"type": "silence", "sensor": "boiler", "for": "5m"}))
    created = await recv_until(ws, lambda m: m["type"] == "silence")
    assert created["event"] == "created" and created["silence"]["created_by"] == "web"
    # Modes are off: the mode cannot be set, and says why.
    assert api(gw, "GET", "/api/mode", token=None) == (
        200,
        {"mode": "", "modes": [], "changed_by": None, "changed_at": None, "next_switch": None},
    )
    status, body = api(gw, "POST", "/api/mode", {"mode": "away"}, token=None)
    assert status == 400 and "modes are off" in body["error"] and body["modes"] == []
    await ws.send(json.dumps({"type": "mode", "mode": "away"}))
    assert "modes are off" in (await recv_until(ws, lambda m: m["type"] == "error"))["error"]
    await ws.close()
