"""How much the database grows per sensor per day with sensor history (SPEC §11): measured, not guessed.

    python bench/history_size.py [--sensors 60] [--days 1] [--database postgres://…]

Writes a day of minutes (1,440 points) for each of N sensors, with ids as discovery makes them
("<friendly_name>.<property>"), through the gateway's own writer (gateway.store.history.write_sync),
in batches of one minute as the gateway does. SQLite (the default, in a temporary state_dir): the
file's size after VACUUM, before and after. PostgreSQL: pg_total_relation_size of the table (rows
and index). Prints bytes per row and per sensor per day.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MINUTES_PER_DAY = 1440
T0 = 1_796_515_200  # 2026-12-06 00:00:00 UTC


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=60)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument(
        "--database", default="", help="postgres://… (default: SQLite in a temporary directory)"
    )
    args = parser.parse_args(argv)

    from gateway import settings
    from gateway.config import parse_config

    state = Path(tempfile.mkdtemp(prefix="history-size-"))
    config = parse_config({"gateway": {"state_dir": str(state), "database": args.database}}, {}, "bench")
    settings.setup(config)

    from django.db import connection

    from gateway.engine.history import MinutePoint
    from gateway.store.history import write_sync
    from gateway.store.models import SensorMinute

    def size() -> int:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:  # inserts only: no dead rows to vacuum
                cursor.execute("select pg_total_relation_size('gateway_sensorminute')")
                return int(cursor.fetchone()[0])
        with connection.cursor() as cursor:
            cursor.execute("VACUUM")
        return Path(settings.database(config)["NAME"]).stat().st_size

    SensorMinute.objects.all().delete()
    before = size()
    rng = random.Random(1)
    sensors = [f"{('kitchen', 'bedroom')[i % 2]}_sensor_{i}.temperature" for i in range(args.sensors)]
    minutes = MINUTES_PER_DAY * args.days
    for m in range(minutes):
        minute = T0 + 60 * m
        points = []
        for sensor in sensors:
            v = round(rng.uniform(15, 25), 2)
            points.append((sensor, MinutePoint(minute, v - 0.3, v + 0.4, v, rng.randrange(60_000))))
        write_sync("home", points)
    after = size()
    rows = minutes * len(sensors)
    per_row = (after - before) / rows
    grown = after - before
    print(f"{connection.vendor}: {rows} rows ({len(sensors)} sensors x {minutes} minutes): {grown} bytes")
    print(f"{per_row:.1f} bytes per row; {per_row * MINUTES_PER_DAY / 1024:.1f} KiB per sensor per day")
    week = per_row * MINUTES_PER_DAY * 7 * len(sensors) / 2**20
    print(f"{week:.1f} MiB for {len(sensors)} sensors kept 7 days")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
