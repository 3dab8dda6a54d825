"""Config: one validated object; errors name the key; `gateway run` exits 2 on a bad config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config, parse_duration
from tests.conftest import ROOT

SENSOR = {"id": "door", "topic": "z2m/door", "format": "zigbee2mqtt", "field": "contact"}


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env={})
    assert config.mqtt.url == "embedded" and config.mqtt.embedded_bind == "127.0.0.1:1883"
    assert config.http.bind == "127.0.0.1:8000" and config.gateway.channel_layer == "memory"
    assert config.mqtt.client_id == "gateway-home"


def test_sample_config_loads() -> None:
    config = load_config(str(ROOT / "gateway.example.toml"), env={})
    assert {s.id for s in config.sensors} == {"front-door", "hall-motion", "freezer", "washer-leak"}
    assert config.sensors_by_id["front-door"].availability_topic == "zigbee2mqtt/front_door/availability"
    assert config.rules[2].for_ == 300.0 and config.rules[2].repeat == 1800.0
    assert not config.telegram_enabled
    # Discovery on, so that a broker Zigbee2MQTT publishes to shows its devices with no other edit.
    assert (config.discovery.zigbee2mqtt, config.discovery.homeassistant) == ("zigbee2mqtt", "homeassistant")
    pointed = load_config(str(ROOT / "gateway.example.toml"), env={"GATEWAY_MQTT_URL": "mqtt://nas:1883"})
    assert pointed.mqtt.url == "mqtt://nas:1883"


def test_environment_variables_are_substituted() -> None:
    data = {"auth": {"tokens": {"ops": "${TOKEN}"}}, "telegram": {"token": "${TG:-}"}}
    config = parse_config(data, {"TOKEN": "s3cret-token"}, "test")
    assert config.auth.tokens == {"ops": "s3cret-token"} and config.telegram.token == ""
    with pytest.raises(ConfigError, match=r"auth\.tokens\.ops: environment variable TOKEN is not set"):
        parse_config(data, {}, "test")
    # ${VAR:-default} as in the shell: the default for an unset or an empty variable.
    site = {"gateway": {"site": "${SITE:-cabin}"}}
    assert parse_config(site, {"SITE": ""}, "test").gateway.site == "cabin"
    assert parse_config(site, {"SITE": "barn"}, "test").gateway.site == "barn"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mqtt": {"protocol": "4"}}, "mqtt.protocol: Input should be"),
        ({"mqtt": {"url": "http://x"}}, "mqtt.url: must be"),
        ({"http": {"bind": "8000"}}, "http.bind: bind must look like HOST:PORT"),
        ({"gateway": {"colour": "red"}}, "gateway.colour: unknown key"),
        ({"gateway": {"channel_layer": "postgres://x"}}, "gateway.channel_layer"),
        ({"sensors": [{**SENSOR, "format": "xml"}]}, "sensors[door].format"),
        ({"sensors": [{"id": "door", "topic": "z2m/door", "format": "json"}]}, "field is required"),
        (
            {"sensors": [{**SENSOR, "expire_after": "soon"}]},
            "sensors[door].expire_after: 'soon' is not a duration",
        ),
        ({"sensors": [SENSOR, SENSOR]}, "sensors: id 'door' is used twice"),
        (
            {"sensors": [SENSOR], "rules": [{"id": "r", "sensor": "nope", "when": {"equals": 1}}]},
            "rules[r].sensor: no sensor with id 'nope'",
        ),
        (
            {
                "sensors": [SENSOR],
                "rules": [{"id": "r", "sensor": "door", "when": {"equals": 1, "above": 2}}],
            },
            "rules[r].when: give exactly one",
        ),
        ({"auth": {"tokens": {"ops": "short"}}}, "shorter than 8"),
        (
            {"http": {"trusted_proxies": ["10.0.0.1", "10.0.0.300"]}},
            "http.trusted_proxies: '10.0.0.300' is not an IP address or network",
        ),
        (
            {"http": {"hosts": ["https://alerts.example.net"]}},
            "http.hosts: 'https://alerts.example.net' is not",
        ),
        ({"http": {"hosts": ["alerts.example.net:443"]}}, "http.hosts: 'alerts.example.net:443' is not"),
    ],
)
def test_errors_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, {}, "test")
    assert message in str(info.value)


def test_each_problem_is_said_once_naming_sensors_and_rules_by_id() -> None:
    sensors = [{**SENSOR, "id": name, "format": "zigbee"} for name in ("door", "hall", "freezer", "leak")]
    with pytest.raises(ConfigError) as info:
        parse_config({"sensors": sensors}, {}, "test")
    assert str(info.value) == (
        "sensors[door, hall, freezer, leak].format: "
        "Input should be 'zigbee2mqtt', 'tasmota', 'json' or 'plain'"
    )
    rule = {"id": "door-opened", "sensor": "door", "when": {"equals": [1]}, "on_raise": [{"topic": ""}]}
    with pytest.raises(ConfigError) as info:
        parse_config({"sensors": [SENSOR], "rules": [rule]}, {}, "test")
    assert str(info.value) == (
        "rules[door-opened].when.equals: must be a boolean, a number or a string; "
        "rules[door-opened].on_raise[0].topic: String should have at least 1 character"
    )
    # Without an id to name it by, a sensor is named by its place in the list (from 0).
    with pytest.raises(ConfigError, match=r"^sensors\[1\]\.id: Field required$"):
        parse_config({"sensors": [SENSOR, {"topic": "a/b"}]}, {}, "test")


def test_durations() -> None:
    assert [parse_duration(v) for v in ("500ms", "5s", "2m", "1h", "", 3)] == [
        0.5,
        5.0,
        120.0,
        3600.0,
        0.0,
        3.0,
    ]
    with pytest.raises(ValueError):
        parse_duration("-1s")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_cli_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[mqtt]\nprotocol = "7"\n')
    result = _run("run", "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "mqtt.protocol" in result.stderr and "Traceback" not in result.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[mqtt\n")
    result = _run("check", "--config", str(broken), cwd=tmp_path)
    assert result.returncode == 2 and "not valid TOML" in result.stderr
    result = _run("run", "--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert result.returncode == 2 and "no such file" in result.stderr


def test_taken_ports_fail_with_a_clear_message(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "gw.toml"
        conf.write_text(
            f'[gateway]\nstate_dir = "{tmp_path}/var"\n[mqtt]\nembedded_bind = "127.0.0.1:{port}"\n'
        )
        result = _run("run", "--config", str(conf), cwd=tmp_path)
        assert result.returncode == 1
        assert f"mqtt.embedded_bind 127.0.0.1:{port}" in result.stderr and "already in use" in result.stderr
        assert "Traceback" not in result.stderr
        check = _run("check", "--config", str(conf), cwd=tmp_path)
        assert check.returncode == 1 and "FAIL" in check.stdout


def test_check_reports_every_service(tmp_path: Path) -> None:
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\nstate_dir = "{tmp_path}/var"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n')
    result = _run("check", "--config", str(conf), cwd=tmp_path)
    assert result.returncode == 1
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "ok" in lines["config"] and "FAIL" in lines["broker"] and "ok" in lines["database"]
