"""deploy/: the systemd units pass `systemd-analyze verify`; install.sh parses, dry-runs, wants root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

UNITS = ROOT / "deploy" / "systemd"
INSTALL = ROOT / "deploy" / "install.sh"
SPLIT = ("web", "mqtt", "telegram", "worker")
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze is missing: it comes with Debian's systemd package (apt-get install systemd)"
        )
    return path


def unit_files() -> list[Path]:
    return sorted([*UNITS.glob("*.service"), *UNITS.glob("*.target")])


def settings(unit: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every setting of a unit file, in order."""
    section, found = "", []
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            found.append((section, key, value))
    return found


def setting(unit: Path, key: str) -> list[str]:
    return [value for _, k, value in settings(unit) if k == key]


def fake_root(tmp_path: Path, units: list[Path]) -> Path:
    """A filesystem root laid out as on an installed box, for `verify --root`.

    verify checks that every Exec*= program exists, and /opt/gateway/venv/bin/gateway only exists
    after install.sh. Rather than edit the units, give them the tree they expect: systemd's own
    units (for network-online.target, multi-user.target and the default dependencies), ours in
    /etc/systemd/system, and an executable stub at each program path they name.
    """
    if not SYSTEM_UNITS.is_dir():
        pytest.fail(f"{SYSTEM_UNITS} is missing: systemd-analyze needs systemd's own units")
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    etc = root / "etc" / "systemd" / "system"
    etc.mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, etc / unit.name)
        for _, key, value in settings(unit):
            if key.startswith("Exec"):
                program = root / value.lstrip("-@:+!").split()[0].lstrip("/")
                program.parent.mkdir(parents=True, exist_ok=True)
                program.write_text("#!/bin/sh\n")
                program.chmod(0o755)
    return root


def verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", "--man=no", f"--root={root}", str(root / "etc/systemd/system" / unit)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )


def about_ours(stderr: str) -> list[str]:
    # Every complaint about one of our files names it (path or unit name), and all our names say gateway.
    return [line for line in stderr.splitlines() if "gateway" in line]


@pytest.mark.parametrize("unit", [u.name for u in unit_files()])
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, unit: str) -> None:
    result = verify(fake_root(tmp_path, unit_files()), unit)
    assert result.returncode == 0, result.stderr
    assert about_ours(result.stderr) == [], result.stderr


def test_verify_here_does_catch_mistakes(tmp_path: Path) -> None:
    # The check above is only worth something if this setup reports a bad unit.
    broken = tmp_path / "gateway.service"
    broken.write_text(
        (UNITS / "gateway.service").read_text().replace("[Service]\n", "[Service]\nWatchdog=30\n")
    )
    others = [u for u in unit_files() if u.name != "gateway.service"]
    result = verify(fake_root(tmp_path, [broken, *others]), "gateway.service")
    assert any("Unknown key" in line and "Watchdog" in line for line in about_ours(result.stderr)), result


def test_the_all_in_one_unit_keeps_the_operations_contract() -> None:
    unit = UNITS / "gateway.service"
    assert setting(unit, "Type") == ["notify"] and setting(unit, "NotifyAccess") == ["main"]
    assert setting(unit, "ExecStart") == [
        "/opt/gateway/venv/bin/gateway run --config /etc/gateway/gateway.toml"
    ]
    assert setting(unit, "WatchdogSec") == ["30"] and setting(unit, "Restart") == ["on-failure"]
    # systemd's SIGKILL must come after the gateway's own 10 s drain.
    assert int(setting(unit, "TimeoutStopSec")[0]) > 10
    assert setting(unit, "CapabilityBoundingSet") == [""] and setting(unit, "ProtectSystem") == ["strict"]


def test_split_units_differ_from_the_all_in_one_only_where_they_must() -> None:
    def service(unit: Path) -> list[tuple[str, str]]:
        return [
            (k, v) for s, k, v in settings(unit) if s == "Service" and k not in ("ExecStart", "MemoryMax")
        ]

    whole = UNITS / "gateway.service"
    for protocol in SPLIT:
        unit = UNITS / f"gateway-{protocol}.service"
        # Same user, notify, watchdog and hardening: a fix to one is a fix to all.
        assert service(unit) == service(whole), unit.name
        assert setting(unit, "ExecStart") == [f"{setting(whole, 'ExecStart')[0]} --protocol {protocol}"]
        assert setting(unit, "PartOf") == ["gateway.target"]
        assert setting(unit, "WantedBy") == ["gateway.target"]
        # Redis is wanted, never required: it may live on another machine.
        assert "redis-server.service" in " ".join(setting(unit, "Wants"))
        assert "redis-server.service" in " ".join(setting(unit, "After"))
        assert not setting(unit, "Requires")


def test_install_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("split", [False, True])
def test_install_dry_run_prints_the_steps(split: bool) -> None:
    argv = ["bash", str(INSTALL), "--dry-run", *(["--split"] if split else [])]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"pip install -q --upgrade {ROOT}\n" in out
    assert "write /etc/gateway/gateway.env (root:root, mode 0600)" in out or "gateway.env exists" in out
    assert "+ systemctl daemon-reload" in out
    shape = "gateway.target" if split else "gateway.service"
    assert re.search(rf"^\+ systemctl (enable --quiet --now|restart) {re.escape(shape)}$", out, re.M), out


def test_install_refuses_to_run_without_root() -> None:
    argv = ["bash", str(INSTALL)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv (util-linux) to drop to nobody")
        argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert result.returncode == 1
    assert "must run as root" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("unit", [u.name for u in UNITS.glob("*.service")])
def test_every_unit_has_files_for_the_connection_caps(unit: str) -> None:
    from gateway.config import HttpSection
    from gateway.server import DESCRIPTORS_BESIDES

    http = HttpSection()
    needed = http.max_websockets + http.max_half_open + DESCRIPTORS_BESIDES
    assert [int(v) for v in setting(UNITS / unit, "LimitNOFILE")] >= [needed], unit
