"""Day one and the day after: `./scripts/run` offline, `gateway check` beside a gateway, taken ports."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from tests.conftest import ROOT, GatewayFactory, free_port

# Runs inside a network namespace with nothing but its own loopback: brings `lo` up (the ioctl
# `ip link set lo up` makes, so iproute2 need not be installed), shows that there is no route
# out, starts ./scripts/run and polls /healthz on the example config's port until it is 200.
OFFLINE_START = r"""
import errno, fcntl, json, os, signal, socket, struct, subprocess, sys, time, urllib.error, urllib.request

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0))[:18])[1]
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
try:
    socket.create_connection(("198.51.100.1", 443), timeout=2).close()  # TEST-NET-2
    route = "connected"
except OSError as err:
    route = errno.errorcode.get(err.errno or 0, str(err))
started = time.monotonic()
with open(sys.argv[1], "wb") as log:
    run = subprocess.Popen(["./scripts/run"], stdout=log, stderr=log, start_new_session=True)
status, seconds = 0, None
while time.monotonic() - started < 30 and run.poll() is None:
    try:
        with urllib.request.urlopen("http://127.0.0.1:8000/healthz", timeout=1) as resp:
            status = resp.status
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError:
        pass
    if status == 200:
        seconds = time.monotonic() - started
        break
    time.sleep(0.05)
# The whole group: before the fix, ./scripts/run may still be in pip.
os.killpg(run.pid, signal.SIGTERM)
try:
    code = run.wait(15)
except subprocess.TimeoutExpired:
    os.killpg(run.pid, signal.SIGKILL)
    code = run.wait()
print(json.dumps({"route": route, "seconds": seconds, "status": status, "exit": code}))
"""


def _namespace() -> list[str]:
    """The command prefix that runs a process in a new network namespace of its own.

    util-linux's unshare (essential on Debian) rather than `ip netns`: nothing to name, so
    nothing left behind, and without root it maps the user to root in a user namespace.
    """
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    prefix = [unshare, "--net"] if os.geteuid() == 0 else [unshare, "--net", "--map-root-user"]
    tried = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=10)
    assert tried.returncode == 0, f"cannot make a network namespace with {prefix}: {tried.stderr}"
    return prefix


def _copy_of_the_repository(target: Path) -> Path:
    """The files git keeps or would keep, as they are in the work tree: the scripts run there, never here."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _venv_with_our_dependencies(repo: Path) -> None:
    """A new .venv that sees this interpreter's packages: the first install fetches only the build backend."""
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", str(repo / ".venv")], check=True, timeout=120)
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    python = repo / ".venv/bin/python"
    found = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    purelib = Path(found.stdout.strip())
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


def _scripts_env() -> dict[str, str]:
    """Ours, less what would point the scripts at this checkout's venv or code."""
    return {k: v for k, v in os.environ.items() if k not in ("VENV", "PYTHONPATH", "VIRTUAL_ENV")}


def _scripts_run(repo: Path, *args: str, pip: str = "as configured") -> subprocess.CompletedProcess[str]:
    env = _scripts_env()
    if pip == "nowhere":  # no index, no links, no config file: pip has no source at all
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1")
    return subprocess.run(
        ["./scripts/run", *args], cwd=repo, capture_output=True, text=True, timeout=600, env=env
    )


@pytest.mark.timeout(240)  # the first start installs from the package index
def test_a_second_start_without_network_is_up_within_5_seconds(tmp_path: Path) -> None:
    repo = _copy_of_the_repository(tmp_path / "repo")
    _venv_with_our_dependencies(repo)
    # Day one, online: the install says what it does (`gateway run --help` then ends the start).
    first = _scripts_run(repo, "--help")
    assert first.returncode == 0, first.stderr
    assert "installing the gateway and its dependencies into .venv (pip install -e .)" in first.stderr
    assert "usage: gateway run" in first.stdout

    # The day after, in a namespace without any route: straight to `gateway run`, no pip.
    log = tmp_path / "offline.log"
    done = subprocess.run(
        [*_namespace(), sys.executable, "-c", OFFLINE_START, str(log)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        env=_scripts_env(),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    output = log.read_text(errors="replace")
    assert result["route"] == "ENETUNREACH", result
    assert result["status"] == 200 and result["seconds"] < 5.0, (result, output)
    assert result["exit"] == 0, output
    assert "pip" not in output and "install" not in output, output

    # pyproject.toml changed (an update may bring dependencies): installed again, and said so.
    # With no package source at all, that install fails, says so, and is tried at the next start.
    with open(repo / "pyproject.toml", "a") as pyproject:
        pyproject.write("\n# an update\n")
    for _ in range(2):
        again = _scripts_run(repo, "--help", pip="nowhere")
        assert again.returncode == 1 and again.stdout == ""
        assert "pyproject.toml changed since the last install: pip install -e . again" in again.stderr
        assert "pip install failed (is the package index reachable?)" in again.stderr


def _gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _broker_line(config: Path) -> tuple[int, str]:
    done = _gateway("check", "--config", str(config))
    return done.returncode, next(line for line in done.stdout.splitlines() if line.startswith("broker"))


def test_check_beside_a_running_embedded_broker_and_just_after_it_stopped(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    gw = gateway_factory()
    code, line = _broker_line(gw.config_path)
    assert code == 0 and line.split()[1] == "ok", line
    assert f"an MQTT broker answers on 127.0.0.1:{gw.mqtt_port}" in line

    # A client still connected when the gateway stops: the broker closes that connection first,
    # so the port stays in TIME_WAIT for a minute, where a bind without SO_REUSEADDR fails.
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="day-one-watcher")
    client.connect("127.0.0.1", gw.mqtt_port)
    client.loop_start()
    try:
        assert gw.stop() == 0
        with socket.socket() as plain, pytest.raises(OSError) as taken:
            plain.bind(("127.0.0.1", gw.mqtt_port))
        assert taken.value.errno == errno.EADDRINUSE
        code, line = _broker_line(gw.config_path)
        assert code == 0 and line.split()[1] == "ok", line
        assert f"embedded broker can listen on 127.0.0.1:{gw.mqtt_port}" in line
    finally:
        client.loop_stop()

    # Taken by something that is not an MQTT broker (an HTTP server): that is a failure.
    gw.start()
    other = tmp_path / "other.toml"
    other.write_text(
        f'[gateway]\nstate_dir = "{tmp_path}/other"\n[mqtt]\nembedded_bind = "127.0.0.1:{gw.http_port}"\n'
    )
    code, line = _broker_line(other)
    assert code == 1 and line.split()[1] == "FAIL", line
    assert f"127.0.0.1:{gw.http_port} is taken by something that is not an MQTT broker" in line


IN_USE = "cannot listen: the address is already in use."


def test_taken_ports_are_one_line_each_before_anything_connects(tmp_path: Path) -> None:
    with socket.socket() as web, socket.socket() as broker:
        for sock in (web, broker):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        http_port, mqtt_port = web.getsockname()[1], broker.getsockname()[1]
        config = tmp_path / "gw.toml"
        config.write_text(
            f'[gateway]\nstate_dir = "{tmp_path}/var"\n[http]\nbind = "127.0.0.1:{http_port}"\n'
            f'[mqtt]\nembedded_bind = "127.0.0.1:{mqtt_port}"\n'
        )
        done = _gateway("run", "--config", str(config))
        assert done.returncode == 1
        assert done.stderr.splitlines() == [
            f"gateway: http.bind 127.0.0.1:{http_port}: {IN_USE} Set http.bind to a free address.",
            f"gateway: mqtt.embedded_bind 127.0.0.1:{mqtt_port}: {IN_USE} "
            "Set mqtt.embedded_bind to a free port, or point mqtt.url at the broker already there.",
        ]


# A port taken between the check and the listen still ends in one line naming the key: no
# warning from a broker that never started, no doubled period (what did start logs at INFO).
LATE = (
    "import sys; from gateway import cli; from gateway.ops import ports; ports.unavailable = lambda *a: []; "
    "sys.exit(cli.main(sys.argv[1:]))"
)


def test_a_port_taken_after_the_check_still_says_it_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {
            f'[mqtt]\nembedded_bind = "127.0.0.1:{port}"\n[http]\nbind = "127.0.0.1:{free_port()}"\n': (
                f"mqtt.embedded_bind 127.0.0.1:{port}: {IN_USE} "
                "Set mqtt.embedded_bind to a free port, or point mqtt.url at the broker already there."
            ),
            f'[http]\nbind = "127.0.0.1:{port}"\n[mqtt]\nembedded_bind = "127.0.0.1:{free_port()}"\n': (
                f"http.bind 127.0.0.1:{port}: {IN_USE} Set http.bind to a free address."
            ),
        }
        for sections, said in cases.items():
            config = tmp_path / "gw.toml"
            config.write_text(f'[gateway]\nstate_dir = "{tmp_path}/var"\n{sections}')
            done = subprocess.run(
                [sys.executable, "-c", LATE, "run", "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            assert done.returncode == 1
            assert [line for line in done.stderr.splitlines() if not line.startswith("INFO ")] == [
                f"gateway: {said}"
            ], done.stderr


def test_the_config_made_on_the_first_start_stays_out_of_git() -> None:
    # ./scripts/run copies gateway.example.toml to gateway.toml, which then holds this box's settings.
    ignored = subprocess.run(["git", "check-ignore", "-q", "gateway.toml"], cwd=ROOT, timeout=30)
    assert ignored.returncode == 0
    tracked = subprocess.run(["git", "check-ignore", "-q", "gateway.example.toml"], cwd=ROOT, timeout=30)
    assert tracked.returncode == 1
