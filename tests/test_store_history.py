"""Sensor history in the database (gateway.store.history), on SQLite and PostgreSQL.

Each step runs in a process of its own on one database, as two MQTT processes of a shared
subscription, or a restart, do: rows of one minute merge, and retention deletes what is older than kept.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_796_558_400  # 2026-12-06 12:00:00 UTC, as in SETUP
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

SETUP = """
import asyncio, json, sys
from gateway.config import load_config
from gateway import settings
settings.setup(load_config(sys.argv[1]))
from gateway.engine.history import MinutePoint
from gateway.store.history import HistoryStore, delete_older_sync, read_sync, write_sync
T0 = 1_796_558_400  # 2026-12-06 12:00:00 UTC
DAY = 86400
def P(minute, lo, hi, last, ms):
    return MinutePoint(minute, lo, hi, last, ms)
def shown(sensor, first=0):
    return [[p.minute, p.min, p.max, p.last] for p in read_sync("home", sensor, first)]
out = {}
"""


def run(tmp_path: Path, code: str, database: str = "") -> dict[str, Any]:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nsite = "home"\nstate_dir = "{tmp_path / "var"}"\ndatabase = "{database}"\n'
    )
    script = SETUP + code + "\nprint(json.dumps(out))\n"
    done = subprocess.run(
        [sys.executable, "-c", script, str(config)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def merge_and_retention(tmp_path: Path, database: str = "") -> None:
    # Process A received 10 at :05 and 40 at :50 of the minute T0, and one reading a minute later.
    run(
        tmp_path,
        "write_sync('home', [('t', P(T0, 10, 40, 40, 50_000)), ('t', P(T0 + 60, 7, 7, 7, 1))])",
        database,
    )
    # Process B, of the same shared subscription, received -3 at :20 and 12 at :55 of T0.
    out = run(
        tmp_path, "write_sync('home', [('t', P(T0, -3, 12, 12, 55_000))])\nout['t'] = shown('t')", database
    )
    assert out["t"] == [[T0, -3.0, 40.0, 12.0], [T0 + 60, 7.0, 7.0, 7.0]]
    # Written again (a retry, or A's write arriving last): nothing changes.
    out = run(
        tmp_path, "write_sync('home', [('t', P(T0, 10, 40, 40, 50_000))])\nout['t'] = shown('t')", database
    )
    assert out["t"] == [[T0, -3.0, 40.0, 12.0], [T0 + 60, 7.0, 7.0, 7.0]]

    # A week and a day of minutes of another sensor, one every 6 hours, and a site of its own.
    rows = ", ".join(f"('old', P(T0 - {h} * 3600, {h}, {h}, {h}, 0))" for h in range(0, 8 * 24 + 1, 6))
    run(
        tmp_path,
        f"write_sync('home', [{rows}])\nwrite_sync('away', [('old', P(T0 - 8 * DAY, 1, 1, 1, 0))])",
        database,
    )
    # Kept 7 days, at T0 + 61 s: the rows of minutes that started more than 7 days before go.
    out = run(
        tmp_path,
        "store = HistoryStore('home', 7 * DAY)\n"
        "out['ok'] = asyncio.run(store.delete_older(T0 + 61))\n"
        "out['old'] = shown('old')\nout['t'] = shown('t')\n"
        "out['away'] = [p.minute for p in read_sync('away', 'old', 0)]\n",
        database,
    )
    assert out["ok"] is True
    kept = [m for m, *_ in out["old"]]
    assert kept == [T0 - h * 3600 for h in range(7 * 24 - 6, -1, -6)]  # the oldest kept: 6 d 18 h before
    assert min(kept) >= T0 + 61 - 7 * 86400
    assert out["t"] == [[T0, -3.0, 40.0, 12.0], [T0 + 60, 7.0, 7.0, 7.0]]
    assert out["away"] == [T0 - 8 * 86400]  # another site's history is its own


def test_minutes_merge_across_processes_and_retention_deletes_on_sqlite(tmp_path: Path) -> None:
    merge_and_retention(tmp_path)


def test_minutes_merge_across_processes_and_retention_deletes_on_postgresql(tmp_path: Path) -> None:
    psycopg = pytest.importorskip("psycopg")  # installed with the test extras
    name = f"gateway_history_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        merge_and_retention(tmp_path, f"postgres://postgres@127.0.0.1:5432/{name}")
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
