"""What storing an alert change costs, the four ways the gateway can store it, on this machine's disk.

    python bench/journal_cost.py [--changes 2000] [--dir PATH]

Each way stores the same raise/clear pairs of one rule and sensor, one change at a time, timed
by the caller's clock from the call to its return (what a broadcast waits for):

  transaction        AlertBook.raise_sync/clear_sync: one SQLite transaction each (WAL,
                     synchronous=NORMAL), as with a Redis layer or `journal = false`; in the
                     calling thread, so without the thread hop the gateway adds (~0.2 ms)
  transaction+FULL   the same with synchronous=FULL: SQLite syncs the WAL at every commit
  journal            JournaledBook.raise_alert/clear: one line appended with write(2) in the
                     calling thread (the copy into the database runs later, in batches)
  journal+fsync      the same with `journal_fsync = true`: fdatasync after each line

`--dir` puts the files on another disk (an SD card's mount, say), which is where the syncs differ:
this machine's virtual disk says little about a Raspberry Pi's card. Prints each way's median
and p99 in microseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[gateway]
site = "cost"
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
"""

SCRIPT = """
import asyncio, json, sys, time
from gateway.config import load_config
from gateway import settings
config = load_config(sys.argv[1])
settings.setup(config)
way, n = sys.argv[2], int(sys.argv[3])
from django.db import connection
from gateway.store.alerts import AlertBook
from gateway.store.journal import JournaledBook, journal_path
sensor = config.sensors_by_id["leak"]
rule = config.rules[0]
times = []

def sync_way():
    if way.endswith("FULL"):
        connection.ensure_connection()
        connection.cursor().execute("PRAGMA synchronous=FULL")
    book = AlertBook("cost")
    for i in range(n):
        t = time.perf_counter()
        if i % 2 == 0:
            book.raise_sync(rule, sensor, True)
        else:
            book.clear_sync(rule.id, sensor.id, False)
        times.append(time.perf_counter() - t)

async def journal_way():
    book = JournaledBook("cost", journal_path(config.gateway.state_dir, "cost"), fsync=way.endswith("fsync"))
    await book.start()
    for i in range(n):
        t = time.perf_counter()
        if i % 2 == 0:
            await book.raise_alert(rule, sensor, True)
        else:
            await book.clear(rule.id, sensor.id, False)
        times.append(time.perf_counter() - t)
        if i % 50 == 49:
            await asyncio.sleep(0.06)  # let the batch copy run, as it would between storms
    await book.close()

if way.startswith("transaction"):
    sync_way()
else:
    asyncio.run(journal_way())
print(json.dumps(times))
"""

WAYS = ("transaction", "transaction+FULL", "journal", "journal+fsync")


def run(way: str, n: int, base: Path) -> list[float]:
    var = Path(tempfile.mkdtemp(prefix="journal-cost-", dir=base))
    config = var / "gateway.toml"
    config.write_text(CONFIG.format(var=var / "var"))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(config), way, str(n)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return [t * 1e6 for t in json.loads(done.stdout.splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=2000)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the files go")
    args = parser.parse_args()
    print(f"{args.changes} changes each, files under {args.dir}")
    print(f"{'way':<20}{'median us':>12}{'p99 us':>12}")
    for way in WAYS:
        times = sorted(run(way, args.changes, Path(args.dir)))
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"{way:<20}{statistics.median(times):>12.1f}{p99:>12.1f}")


if __name__ == "__main__":
    main()
