"""Escalation steps and silences over alerts in the database (gateway.store.alerts), across processes.

Each step runs in a process of its own on one SQLite file, as a restart (or a second process of the
split mode) does: a step fires once, an ended silence's alerts are released once, and `seq` counts
only what is announced.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_store_script

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

SETUP = """
import json, sys
from gateway.config import load_config
from gateway import settings
config = load_config(sys.argv[1])
settings.setup(config)
from gateway.store.alerts import AlertBook
book = AlertBook("home")
sensor = config.sensors_by_id["leak"]
rule = {r.id: r for r in config.rules}["leak-wet"]
out = {}
"""

CONFIG = """
[gateway]
site = "home"
state_dir = "{var}"

[[sensors]]
id = "leak"
name = "Leak"
zone = "kitchen"
topic = "z/leak"
format = "plain"

[[rules]]
id = "leak-wet"
sensor = "leak"
when = {{ equals = true }}
clear = {{ equals = false }}
severity = "critical"
escalate = [{{ after = "5m", notify = ["alerts.oncall"] }}, {{ after = "10m" }}]
"""


def run(tmp_path: Path, code: str) -> dict[str, Any]:
    return run_store_script(tmp_path, CONFIG.format(var=tmp_path / "var"), SETUP + code)


def test_each_escalation_step_fires_once_across_processes(tmp_path: Path) -> None:
    raised = run(
        tmp_path, "c = book.raise_sync(rule, sensor, True)\nout['alert'] = c.alert\nout['seq'] = c.seq\n"
    )
    alert = raised["alert"]
    assert alert["escalation"] is None and alert["silenced"] is None
    first = run(
        tmp_path,
        f"c = book.escalate_sync('{alert['id']}', 1, ('alerts.oncall',))\n"
        "out['event'], out['seq'], out['groups'] = c.event, c.seq, c.groups\n"
        "out['text'] = json.loads(c.text)\n",
    )
    assert first["event"] == "escalated" and first["seq"] == raised["seq"] + 1
    assert first["groups"] == ["alerts", "alerts.kitchen", "alerts.oncall", "sensor.leak"]
    assert first["text"]["level"] == 1 and first["text"]["alert"]["escalation"] == 1
    # Another process (a restart, or a peer) tries the same step, and an earlier one: nothing, no seq.
    again = run(
        tmp_path,
        f"out['again'] = book.escalate_sync('{alert['id']}', 1, ())\n"
        f"out['lower'] = book.escalate_sync('{alert['id']}', 0, ())\n"
        "out['seq'] = book.seq_sync()\n",
    )
    assert again == {"again": None, "lower": None, "seq": first["seq"]}
    # Acknowledged: no step after it.
    acked = run(
        tmp_path,
        f"book.acknowledge_sync('{alert['id']}', 'mqtt')\n"
        f"out['second'] = book.escalate_sync('{alert['id']}', 2, ())\n"
        "out['open'] = book.open_alerts_sync()\n",
    )
    assert acked["second"] is None and acked["open"][0]["escalation"] == 1


def test_a_silence_covers_open_alerts_and_its_end_releases_each_once(tmp_path: Path) -> None:
    raised = run(tmp_path, "c = book.raise_sync(rule, sensor, True)\nout['alert'] = c.alert\n")["alert"]
    covered = run(
        tmp_path,
        "out['n'] = book.cover_sync('sil111', {'zone': 'kitchen'})\n"
        "out['other'] = book.cover_sync('sil222', {'zone': 'kitchen'})\n"
        f"out['step'] = book.escalate_sync('{raised['id']}', 1, ())\n"
        "out['open'] = book.open_alerts_sync()\n"
        "out['seq'] = book.seq_sync()\n",
    )
    # Held by the first silence only; a held alert does not escalate.
    assert covered["n"] == 1 and covered["other"] == 0 and covered["step"] is None
    assert covered["open"][0]["silenced"] == "sil111"
    # The first silence ends while the second still runs: held by the second, nothing announced.
    moved = run(
        tmp_path,
        "out['changes'] = book.release_sync('sil111', lambda labels: 'sil222')\n"
        "out['open'] = book.open_alerts_sync()\n"
        "out['seq'] = book.seq_sync()\n",
    )
    assert moved["changes"] == [] and moved["open"][0]["silenced"] == "sil222"
    assert moved["seq"] == covered["seq"]
    # The second ends: the alert is notified once (an `unsilenced` event); a second process finds none.
    released = run(
        tmp_path,
        "cs = book.release_sync('sil222', lambda labels: None)\n"
        "out['changes'] = [(c.event, c.seq, c.alert) for c in cs]\n"
        "out['again'] = book.release_sync('sil222', lambda labels: None)\n"
        f"out['step'] = book.escalate_sync('{raised['id']}', 1, ()).alert\n",
    )
    [(event, seq, alert)] = released["changes"]
    assert event == "unsilenced" and seq == covered["seq"] + 1
    assert alert["silenced"] is None and alert["state"] == "active"
    assert released["again"] == [] and released["step"]["escalation"] == 1


def test_a_raise_under_a_silence_carries_its_id(tmp_path: Path) -> None:
    out = run(tmp_path, "out['alert'] = book.raise_sync(rule, sensor, True, silenced='abc234').alert\n")
    assert out["alert"]["silenced"] == "abc234"
    listed = run(tmp_path, "out['alerts'] = book.list_sync('open', 10)\n")["alerts"]
    assert listed[0]["silenced"] == "abc234"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """The database line of the config: SQLite in the state directory, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield ""
        return
    psycopg = pytest.importorskip("psycopg")  # installed with the test extras
    name = f"gateway_store_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f'database = "postgres://postgres@127.0.0.1:5432/{name}"'
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_reading_raises_or_clears_once_though_both_processes_act_on_it(
    tmp_path: Path, database: str
) -> None:
    # Shared subscriptions: the process that got a reading and its peer both act on it (either may
    # be the first to see the change). One's write can wait on the database while the other writes
    # that reading and the next: the late one must change nothing. Each call is a process.
    config = CONFIG.format(var=tmp_path / "var").replace("state_dir = ", f"{database}\nstate_dir = ", 1)

    def run(tmp_path: Path, code: str) -> dict[str, Any]:
        return run_store_script(tmp_path, config, SETUP + code)

    def act(code: str) -> Any:
        return run(
            tmp_path, f"c = {code}\nout['r'] = None if c is None else [c.event, c.alert['id'], c.seq]\n"
        )["r"]

    opened = act("book.raise_sync(rule, sensor, True, cause=1000.25)")  # door open, reading at A
    assert opened[0] == "raised"
    assert act("book.clear_sync('leak-wet', 'leak', False, cause=1000.5)")[:2] == ["cleared", opened[1]]  # B
    # A's write of the first reading comes now, after the second was stored: no new alert.
    assert act("book.raise_sync(rule, sensor, True, cause=1000.25)") is None
    again = act("book.raise_sync(rule, sensor, True, cause=1000.75)")
    assert again[0] == "raised" and again[1] != opened[1]
    # The clear of 1000.5, late from the other process, must not clear the alert 1000.75 raised.
    assert act("book.clear_sync('leak-wet', 'leak', False, cause=1000.5)") is None
    state = run(
        tmp_path,
        "out['open'] = [(a['id'], a['raised_at']) for a in book.open_alerts_sync()]\n"
        "out['seq'] = book.seq_sync()\n",
    )
    assert [a for a, _ in state["open"]] == [again[1]] and state["seq"] == again[2]
    assert state["open"][0][1].startswith("1970-01-01T00:16:40.75")  # raised when its reading came
    # Without a cause (one process; timers) a raise is refused only while one is open.
    assert act("book.clear_sync('leak-wet', 'leak', False)")[0] == "cleared"
    assert act("book.raise_sync(rule, sensor, True)")[0] == "raised"
