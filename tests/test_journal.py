"""The alert journal (gateway.store.journal): durable in one write, copied into the database, replayed.

In-process tests of the file and of the book on a real SQLite file (each in a process of its own,
as a restart is), then the gateway itself, killed with SIGKILL in the middle of an alert storm.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from websockets.exceptions import ConnectionClosed, InvalidMessage

from gateway.engine.alerts import AlertChange, AlertRecord
from gateway.store.journal_file import Entry, JournalBusy, JournalFile
from tests.conftest import (
    GatewayFactory,
    GatewayProcess,
    Service,
    alert_event,
    http_get,
    recv_json,
    recv_until,
    run_store_script,
    until,
    ws_connect,
)
from tests.test_store_escalation import CONFIG
from tests.test_store_escalation import SETUP as STORE_SETUP

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "ops-secret-token"

# The store tests' leak sensor and rule (it escalates only after minutes: no step here).
SETUP = (
    STORE_SETUP
    + """
import asyncio
from gateway.store.journal import JournaledBook, journal_path
path = journal_path(config.gateway.state_dir, "home")
"""
)


def run(tmp_path: Path, code: str) -> dict[str, Any]:
    return run_store_script(tmp_path, CONFIG.format(var=tmp_path / "var"), SETUP + code)


def events(db: Path, site: str = "home") -> list[tuple[int, str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT seq, event, alert_id FROM gateway_alertevent WHERE site = ? ORDER BY seq", [site]
        )
        return [(int(s), str(e), str(a)) for s, e, a in rows]


# The file


def test_a_torn_tail_is_skipped_and_the_entries_before_it_are_kept(tmp_path: Path) -> None:
    code = """
async def main():
    book = JournaledBook("home", path)
    await book.start()
    for wet in (True, False, True):
        change = await (book.raise_alert(rule, sensor, wet) if wet else book.clear(rule.id, sensor.id, wet))
        out.setdefault("seqs", []).append(change.seq)
    out["lines"] = path.read_bytes().count(b"\\n")
asyncio.run(main())
"""
    first = run(
        tmp_path, code.replace("await book.start()", "await book.start(); book._schedule = lambda d: None")
    )
    # Three lines, none copied (no flush ran): as if killed before the copy. Then a power cut tears
    # the tail: half a line and zeros, as ext4 leaves a file whose size got out before its data.
    journal = tmp_path / "var" / "alerts-home.journal"
    assert first["seqs"] == [1, 2, 3] and first["lines"] == 3
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:2]) + lines[2][:40] + b"\0" * 100)
    reader = JournalFile(journal)
    entries = reader.open()
    reader.close()
    assert [e.seq for e in entries] == [1, 2]
    assert [e.event for e in entries] == ["raised", "cleared"]
    # The next start replays the two whole entries, empties the file and counts on from them.
    second = run(
        tmp_path,
        """
async def main():
    book = JournaledBook("home", path)
    out["replayed"] = await book.start()
    out["size"] = path.stat().st_size
    change = await book.raise_alert(rule, sensor, True)
    out["seq"] = change.seq
    await book.close()
asyncio.run(main())
""",
    )
    assert second == {"replayed": 2, "size": 0, "seq": 3}
    assert [e[:2] for e in events(tmp_path / "var" / "gateway.sqlite3")] == [
        (1, "raised"),
        (2, "cleared"),
        (3, "raised"),
    ]


def test_a_line_gives_back_the_alert_exactly() -> None:
    at = datetime(2026, 12, 6, 21, 0, 0, 123456, tzinfo=UTC)
    alert = AlertRecord(
        id="abc234",
        site="home",
        rule="leak-wet",
        sensor="leak",
        zone="kitchen",
        severity="critical",
        state="acknowledged",
        message='Leak \u00e9 "wet"\n',
        value={"water": [1, 2.5, None]},
        groups=("alerts", "alerts.kitchen", "alerts.oncall"),
        raised_at=at,
        acknowledged_at=at.replace(microsecond=999999),
        acknowledged_by="telegram:@alice",
        silenced="s1lenc",
        notify_from=at,
        escalation=2,
        display=None,
    )
    entry = Entry(41, "acknowledged", at, alert, ("leak", {"water": [1, 2.5, None]}, False))
    told = AlertChange.make("acknowledged", 41, alert.as_json(), alert.groups).text
    line = entry.line(told)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert Entry.parse(line) == entry
    # The envelope inside is what the clients were told, byte for byte.
    assert told.encode() in line


def test_the_copys_short_adapters_store_what_djangos_store(tmp_path: Path) -> None:
    # gateway.store.alerts._adapter shortens Field.get_db_prep_save for SQLite: the same value out.
    code = """
from datetime import datetime, timedelta, timezone, UTC
from django.db import connection
from gateway.store.alerts import _adapter
from gateway.store.models import Alert, AlertEvent, SensorState
samples = [None, "", "caf\u00e9 \u2603", 0, 7, -3, 21.5, True, False, {"a": [1, "\u00e9", None]}, [1, 2],
           datetime(2026, 12, 6, 23, 59, 59, 123456, tzinfo=UTC), datetime(2026, 12, 6, 1, 2, 3, tzinfo=UTC),
           datetime(2026, 12, 6, 1, 2, 3, tzinfo=timezone(timedelta(hours=2)))]
checked, differ = 0, []
for model in (Alert, AlertEvent, SensorState):
    for field in model._meta.concrete_fields:
        fast = _adapter(field)
        for value in samples:
            try:
                want = field.get_db_prep_save(value, connection)
            except Exception:
                continue  # a value this field does not take
            got = fast(value)
            checked += 1
            if got != want or type(got) is not type(want):
                differ.append([model.__name__, field.name, repr(value), repr(got), repr(want)])
out["checked"], out["differ"] = checked, differ
"""
    out = run(tmp_path, code)
    assert out["differ"] == [] and out["checked"] > 200


def test_a_second_process_on_the_same_journal_is_refused(tmp_path: Path) -> None:
    first = JournalFile(tmp_path / "alerts-home.journal")
    first.open()
    try:
        with pytest.raises(JournalBusy, match="another gateway process"):
            JournalFile(tmp_path / "alerts-home.journal").open()
    finally:
        first.close()
    again = JournalFile(tmp_path / "alerts-home.journal")
    assert again.open() == []
    again.close()


# The book


def test_reads_see_what_is_journaled_and_direct_writes_keep_one_count(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        """
async def main():
    book = JournaledBook("home", path, fsync=True)
    await book.start()
    book._schedule = lambda d: None  # no copy on its own: the reads must write what waits
    raised = await book.raise_alert(rule, sensor, True)
    out["again"] = await book.raise_alert(rule, sensor, True)
    out["pending"] = len(book.pending)
    out["open"] = [a["id"] for a in await book.open_alerts()]
    out["raised"] = raised.alert["id"]
    acked = await book.acknowledge(raised.alert["id"], "web:ops")
    out["acked"] = [acked.seq, acked.alert["state"]]
    cleared = await book.clear(rule.id, sensor.id, False)
    out["cleared"] = [cleared.seq, cleared.alert["acknowledged_by"]]
    out["after"] = [c.seq for c in await book.events_after(0)]
    out["refused"] = ""
    try:
        await book.acknowledge(raised.alert["id"], "web:ops")
    except Exception as err:
        out["refused"] = str(err)
    out["seq"] = await book.seq()
    await book.close()
    out["size"] = path.stat().st_size
asyncio.run(main())
""",
    )
    assert out["again"] is None  # one open alert per rule and sensor, from memory
    assert out["pending"] == 1 and out["open"] == [out["raised"]]
    assert out["acked"] == [2, "acknowledged"]  # written to the database directly, counted on
    assert out["cleared"] == [3, "web:ops"]  # the journal knows of the acknowledgement
    assert out["after"] == [1, 2, 3]
    assert "already cleared" in out["refused"]
    assert out["seq"] == 3 and out["size"] == 0


def test_copies_from_two_threads_at_once_write_each_line_once(tmp_path: Path) -> None:
    # Django runs each HTTP request's database calls in a thread of its own (asgiref's
    # ThreadSensitiveContext): /api/alerts writing what waits can meet the timed copy in the
    # database thread. Both had the same lines to write (each line's seq is unique: one failed).
    out = run(
        tmp_path,
        """
import threading
from django.db import connection
async def main():
    book = JournaledBook("home", path)
    await book.start()
    book._schedule = lambda d: None
    for i in range(300):
        await (book.raise_alert(rule, sensor, True) if i % 2 == 0 else book.clear(rule.id, sensor.id, False))
    entries = list(book.pending)
    start, results = threading.Barrier(2), []

    def copy():
        start.wait()
        try:
            results.append(book._write(entries))
        except Exception as err:
            results.append(repr(err))
        finally:
            connection.close()

    threads = [threading.Thread(target=copy) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["results"] = sorted(results, key=str)
    out["seq"] = await book.seq()
asyncio.run(main())
""",
    )
    assert out == {"results": [0, 300], "seq": 300}


def test_another_writer_of_the_same_site_is_noticed_and_nothing_is_lost(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        """
async def main():
    book = JournaledBook("home", path)
    await book.start()
    book._schedule = lambda d: None
    # Another process writes this site's alerts behind the journal's back (a misconfiguration).
    other = AlertBook("home")
    from channels.db import database_sync_to_async
    await database_sync_to_async(other.raise_sync)(rule, sensor, True)
    change = await book.repeat(rule.id, sensor.id)
    out["repeat"] = change
    wet = await book.raise_alert(rule, sensor, True)
    out["wet"] = wet.seq
    try:
        await book.open_alerts()
    except Exception as err:
        out["error"] = str(err)
    out["pending"] = len(book.pending)
    out["lines"] = path.read_bytes().count(b"\\n")
asyncio.run(main())
""",
    )
    assert out["repeat"] is None and out["wet"] == 1
    assert "another process writes its alerts" in out["error"]
    assert out["pending"] == 1 and out["lines"] == 1  # still in the journal, still waiting


# The gateway, killed in the middle of a storm

STORM_SENSORS = 20

STORM_CONFIG = "".join(
    f"""
[[sensors]]
id = "storm-{i}"
name = "Storm {i}"
zone = "lab"
topic = "storm/{i}"
format = "json"
field = "on"

[[rules]]
id = "storm-{i}-on"
sensor = "storm-{i}"
when = {{ equals = true }}
clear = {{ equals = false }}
severity = "warning"
"""
    for i in range(STORM_SENSORS)
)


def storm(port: int, count: int, stop: threading.Event) -> int:
    """Toggle the storm sensors `count` times (each one raise or clear), QoS 1, as fast as paho goes."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="storm")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    sent = 0
    try:
        for k in range(count):
            if stop.is_set():
                break
            i, on = k % STORM_SENSORS, (k // STORM_SENSORS) % 2 == 0
            client.publish(f"storm/{i}", json.dumps({"on": on}), qos=1)
            sent += 1
        client.publish("storm/done", "1", qos=1).wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()
    return sent


async def watch(
    gw: GatewayProcess, mqtt_port: int, count: int, enough: int, ready: Callable[[], None]
) -> list[dict[str, Any]]:
    """Storm `count` changes and record every alert event until `enough` arrived, then kill -9 the gateway.

    `ready` runs once the dashboard is connected, before the storm."""
    heard: list[dict[str, Any]] = []
    ws = await ws_connect(gw)
    await recv_json(ws)  # hello
    ready()
    stop = threading.Event()
    publisher = asyncio.ensure_future(asyncio.to_thread(storm, mqtt_port, count, stop))
    try:
        while len(heard) < enough:
            heard.append(await recv_until(ws, lambda m: m.get("type") == "alert", timeout=20))
        gw.kill()
    finally:
        stop.set()
        await publisher
        await ws.close()
    return heard


def check_book(db: Path, heard: list[dict[str, Any]], site: str = "test") -> list[tuple[int, str, str]]:
    """What the database holds: every event heard, once, seq 1..n with no gap, rows as their last event."""
    stored = events(db, site)
    seqs = [s for s, _, _ in stored]
    assert seqs == list(range(1, len(seqs) + 1)), "a gap or a repeat in seq"
    by_seq = {s: (e, a) for s, e, a in stored}
    for msg in heard:
        assert "saved" not in msg, "announced unsaved"
        assert by_seq.get(msg["seq"]) == (msg["event"], msg["alert"]["id"]), f"lost: {msg['seq']}"
    with sqlite3.connect(db) as conn:
        (counter,) = conn.execute("SELECT seq FROM gateway_sitecounter WHERE site = ?", [site]).fetchone()
        assert counter == len(seqs)
        last = {a: e for _, e, a in stored}
        rows = dict(conn.execute("SELECT id, state FROM gateway_alert WHERE site = ?", [site]).fetchall())
        assert set(rows) == set(last)
        for alert_id, event in last.items():
            assert (rows[alert_id] == "cleared") == (event == "cleared"), alert_id
        open_pairs = conn.execute(
            "SELECT rule, sensor, COUNT(*) FROM gateway_alert WHERE site = ? AND state != 'cleared' "
            "GROUP BY rule, sensor HAVING COUNT(*) > 1",
            [site],
        ).fetchall()
        assert open_pairs == [], "two open alerts of one rule and sensor"
    return stored


@pytest.mark.timeout(180)
@pytest.mark.parametrize("locked", [False, True], ids=["copying", "database-locked"])
async def test_kill_9_in_an_alert_storm_loses_and_repeats_nothing(
    gateway_factory: GatewayFactory, mosquitto: Service, locked: bool
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", extra=STORM_CONFIG)
    db = gw.workdir / "var" / "gateway.sqlite3"
    blocker = sqlite3.connect(db, timeout=1, isolation_level=None)

    def lock() -> None:
        # The database refuses every write (another program holds its lock): from here on the
        # alerts live in the journal only, and the gateway is killed before any reaches the database.
        if locked:
            blocker.execute("BEGIN EXCLUSIVE")

    try:
        heard = await watch(gw, mosquitto.port, 4000, 600, lock)
    finally:
        if locked:
            blocker.execute("ROLLBACK")
        blocker.close()
    assert gw.proc is None  # killed
    seqs = [m["seq"] for m in heard]
    assert seqs == sorted(set(seqs)) and len(seqs) == 600
    journal = gw.workdir / "var" / "alerts-test.journal"
    if locked:
        assert events(db, "test") == []
        assert journal.read_bytes().count(b"\n") >= 600

    gw.start()
    if locked:
        assert "alert events written to the database at start-up" in gw.log
    # The broker hands the restarted gateway what the storm sent while it was dead, at once: a
    # dashboard that cannot keep up with that second storm is dropped as too slow (at 256 KiB
    # unread, even before it read its handshake's answer), and reconnects, as the page does.
    retries = 0
    for _ in range(10):
        try:
            ws = await ws_connect(gw)
        except InvalidMessage:
            retries += 1
            continue  # dropped before it read the answer to its handshake
        try:
            hello = await recv_json(ws)
            assert hello["seq"] >= seqs[-1]
            # It counts on from there: a new change gets the next seq, nothing is told twice. (A
            # change on and one off: whatever the second storm left, one of them changes it.)
            for on in (True, False):
                await asyncio.to_thread(_publish, mosquitto.port, "storm/0", json.dumps({"on": on}))
            nxt = await recv_until(ws, lambda m: m.get("type") == "alert", timeout=10)
            assert nxt["seq"] == hello["seq"] + 1
            break
        except ConnectionClosed:
            retries += 1
            continue  # dropped while the second storm went on
        finally:
            await ws.close()
    else:
        raise AssertionError(f"no dashboard kept up after the restart in 10 attempts:\n{gw.log[-3000:]}")
    assert retries == 0 or "dropped WebSocket client" in gw.log  # that, and nothing else
    status, body = http_get(gw.url + "/api/alerts?state=open", "ops-secret-token")
    assert status == 200, (body, gw.log[-4000:])
    assert gw.stop() == 0
    stored = check_book(db, [*heard, nxt])
    assert journal.stat().st_size == 0  # all of it in the database, the file emptied at the stop
    assert len(stored) >= 601


@pytest.mark.timeout(120)
async def test_in_a_storm_the_copy_into_the_database_goes_on_without_reads(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    # A read (a dashboard's hello, /api/alerts) or the stop writes what waits: here nothing reads
    # while 8,000 changes come, and the database must fill during the storm and after it on its
    # own (a copy that only reads set off would pass every other test).
    total = 8000
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", extra=STORM_CONFIG)
    db = gw.workdir / "var" / "gateway.sqlite3"
    ws = await ws_connect(gw)
    await recv_json(ws)  # hello: the last read until the storm is over
    stop = threading.Event()
    publisher = asyncio.ensure_future(asyncio.to_thread(storm, mosquitto.port, total, stop))
    stored_while_storming = 0
    try:
        heard = 0
        while heard < total - 2000:  # the storm still has 2,000 changes to go
            await recv_until(ws, lambda m: m.get("type") == "alert", timeout=20)
            heard += 1
        stored_while_storming = len(events(db, "test"))  # the test's own read-only look at the file
        while heard < total:
            await recv_until(ws, lambda m: m.get("type") == "alert", timeout=20)
            heard += 1
    finally:
        stop.set()
        await publisher
        await ws.close()
    assert stored_while_storming > 0  # copied during the storm (1,400 to 4,400 here), not at its end
    await until(lambda: len(events(db, "test")) == total, what="the rest copied without a read")
    assert gw.stop() == 0


async def test_with_the_journal_a_locked_database_delays_no_alert(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}")
    ws = await ws_connect(gw)
    hello = await recv_json(ws)
    blocker = sqlite3.connect(gw.workdir / "var" / "gateway.sqlite3", timeout=1, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        await asyncio.to_thread(_publish, mosquitto.port, "zigbee2mqtt/front_door", '{"contact": false}')
        # Stored (journaled) and told at once: the database's 5 s lock wait is not on its way.
        raised = await recv_until(ws, alert_event("raised"), timeout=4)
        assert "saved" not in raised and raised["seq"] == hello["seq"] + 1
        await until(lambda: "not yet in the database" in gw.log, what="the waiting copy logged")
        assert gw.wait_healthy()["status"] == "ok"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # The database is free again: the copy goes through, and the alert is there to query.
    alerts_url = gw.url + "/api/alerts"
    await until(
        lambda: (
            raised["alert"]["id"] in {a["id"] for a in http_get(alerts_url, "ops-secret-token")[1]["alerts"]}
        ),
        what="the alert in /api/alerts",
    )
    await until(lambda: "took the waiting alert events again" in gw.log, what="the copy's recovery logged")
    await ws.close()


def _publish(port: int, topic: str, payload: str) -> None:
    import paho.mqtt.publish as mqtt_publish

    mqtt_publish.single(topic, payload, qos=1, hostname="127.0.0.1", port=port)
