"""Silences and the site's mode in the database (gateway.store.silences), across processes sharing it.

Each step runs in a process of its own on one SQLite file, as a restart does; so does the upgrade
of a database made by the schema before silences (migration 0003), whose alerts stay.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SETUP = """
import json, sys
from datetime import datetime, timedelta, UTC
from gateway.config import load_config
from gateway import settings
settings.setup(load_config(sys.argv[1]))
from gateway.store.silences import SilenceBook
book = SilenceBook("home")
now = datetime(2026, 12, 6, 15, 0, tzinfo=UTC)
out = {}
"""


def run(tmp_path: Path, code: str) -> dict[str, Any]:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nsite = "home"\nstate_dir = "{tmp_path / "var"}"\n')
    script = SETUP + code + "\nprint(json.dumps(out))\n"
    done = subprocess.run(
        [sys.executable, "-c", script, str(config)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_a_silence_is_kept_until_it_ends_and_its_end_is_kept(tmp_path: Path) -> None:
    made = run(
        tmp_path,
        "out['a'] = book.create_sync({'zone': 'kitchen'}, 'painting', 'web:ops', now,"
        " now + timedelta(hours=2))\n"
        "out['b'] = book.create_sync({'sensor': 'smoke', 'severity': 'critical'}, '', 'telegram:@ann', now,"
        " now + timedelta(minutes=30))\n",
    )
    a, b = made["a"], made["b"]
    assert a == {
        "id": a["id"],
        "sensor": None,
        "zone": "kitchen",
        "rule": None,
        "severity": None,
        "comment": "painting",
        "created_by": "web:ops",
        "created_at": "2026-12-06T15:00:00.000Z",
        "ends_at": "2026-12-06T17:00:00.000Z",
    }
    assert len(a["id"]) == 6 and a["id"] != b["id"]
    # Another process (a restart): both still run; one is removed, twice.
    later = run(
        tmp_path,
        "out['running'] = book.running_sync()\n"
        f"out['ended'] = book.end_sync('{b['id'].upper()} ', 'mqtt', now + timedelta(minutes=5))\n"
        f"out['again'] = book.end_sync('{b['id']}', 'mqtt', now + timedelta(minutes=6))\n"
        "out['unknown'] = book.end_sync('zzzzzz', 'mqtt', now)\n",
    )
    assert [s["id"] for s in later["running"]] == [a["id"], b["id"]]
    assert later["ended"] == b and later["again"] is None and later["unknown"] is None
    assert [s["id"] for s in run(tmp_path, "out['running'] = book.running_sync()\n")["running"]] == [a["id"]]


def test_a_silence_needs_a_known_matcher(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        "for m in ({}, {'room': 'x'}):\n"
        "    try:\n"
        "        book.create_sync(m, '', 'api', now, now)\n"
        "    except ValueError as err:\n"
        "        out[str(len(out))] = str(err)\n"
        "out['running'] = book.running_sync()\n",
    )
    assert out["0"] == out["1"] == "a silence matches by one or more of sensor, zone, rule, severity"
    assert out["running"] == []


def test_the_mode_and_who_set_it_survive_a_restart(tmp_path: Path) -> None:
    assert run(tmp_path, "out['mode'] = book.mode_sync()\n") == {"mode": None}
    run(tmp_path, "book.set_mode_sync('away', 'telegram:@ann', now)\n")
    run(tmp_path, "book.set_mode_sync('night', 'schedule', now + timedelta(hours=8))\n")
    assert run(tmp_path, "out['mode'] = book.mode_sync()\n")["mode"] == {
        "mode": "night",
        "changed_by": "schedule",
        "changed_at": "2026-12-06T23:00:00.000Z",
    }


def test_a_database_of_the_schema_before_silences_is_upgraded_with_its_alerts(tmp_path: Path) -> None:
    run(tmp_path, "")
    db = tmp_path / "var" / "gateway.sqlite3"
    with sqlite3.connect(db) as conn:
        # Back to 0003: the new table and columns gone, as a database of the previous release has them.
        conn.execute("DROP TABLE gateway_silence")
        conn.execute("DROP TABLE gateway_sitemode")
        for column in ("silenced", "notify_from", "escalation", "display"):
            conn.execute(f"ALTER TABLE gateway_alert DROP COLUMN {column}")
        conn.execute("DROP TABLE gateway_sensorminute")  # 0006's, and any later migration's: not there yet
        conn.execute("DROP INDEX gateway_ale_site_c0b5a6_idx")  # 0007's
        conn.execute("DELETE FROM django_migrations WHERE app = 'gateway' AND name > '0004'")
        conn.execute("DELETE FROM django_migrations WHERE app = 'gateway' AND name LIKE '0004%'")
        conn.execute(
            "INSERT INTO gateway_alert (id, site, rule, sensor, zone, severity, state, message, value,"
            " groups, raised_at) VALUES ('abc234', 'home', 'leak', 'sink', 'kitchen', 'critical',"
            " 'active', 'Leak', 'true', '[\"alerts\"]', '2026-12-06 14:00:00')"
        )
    out = run(
        tmp_path,
        "from gateway.store.models import Alert\n"
        "a = Alert.objects.get(id='abc234')\n"
        "out['alert'] = [a.state, a.silenced, a.escalation, a.notify_from, a.display]\n"
        "out['silence'] = book.create_sync({'rule': 'leak'}, '', 'api', now, now)['rule']\n",
    )
    assert out == {"alert": ["active", None, None, None, None], "silence": "leak"}
    with sqlite3.connect(db) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM django_migrations WHERE app = 'gateway'")}
    assert json.dumps(sorted(names)).count("0004_silences_modes_escalation") == 1
