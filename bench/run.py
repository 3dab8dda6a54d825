"""The benchmark of issue 8: the gateway against the raw Python floor, in one run, on this machine.

    python bench/run.py [--quick] [--json FILE] [--only NAME[,NAME]]... [--subjects floor,memory,redis]
                        [--history KEEP]

Starts a private mosquitto (set_tcp_nodelay) and redis-server on free ports of 127.0.0.1 and
measures three subjects one after the other, each a real process: the raw floor (bench/floor.py:
paho -> `websockets` broadcast, no ASGI, no channel layer), the gateway with the in-memory layer,
and the gateway with the Redis layer. Every gateway figure is printed with its ratio to the floor
of the same run. Sections (`--only` picks some; all by default):

  startup    spawn -> sd_notify READY=1 (a NOTIFY_SOCKET bound here), spawn -> /healthz 200,
             and the gateway's own "ready in" log line; idle RSS once start-up settled
  latency    MQTT publish -> the alert event on 1 WebSocket, 20 triggers/s (400; --quick 40):
             p50/p99, and the mean of the gateway's own receipt -> hand-off histogram
  rss        RSS per idle authenticated WebSocket: RSS delta over the biggest fan-out's clients
  fanout     1,000 clients (20 triggers) and 100 clients (50 triggers) at 5 triggers/s, held
             by 4 worker processes: p50/p99 of receive time - publish time (one clock,
             time.time(), one machine) and lost events. An event still missing when nothing
             arrived for 5 s is lost; a late one counts in the percentiles.
  ingest     a QoS 1 burst of 10,000 readings on 8 sensors whose threshold rules are evaluated
             on each (one fires on about 1 reading in 1,000), one dashboard connected: handled /
             (last handled - first publish), by gateway_mqtt_messages_total{outcome="ok"}
             (the floor: what its WebSocket client received). The broker queues the burst
             (max_queued_messages 1000000), so a loss is the subject's. Also two
             `--protocol mqtt --protocol web` processes on one MQTT 5 shared subscription and
             one Redis layer, their counters summed.
  telegram   one alert to 60 subscribed chats through the Bot API stand-in
             (tests/telegram_standin.py), with its rate-limit violation counts; memory:
             all-in-one, redis: split web + mqtt + telegram processes
  footprint  idle RSS and start -> READY=1 per runtime shape (issue 7), and the RSS of a
             Python that only imported daphne, channels, Django and paho
  storm      an alert storm (gateways only: the floor stores nothing): 10,000 QoS 1 toggles
             (--quick 500) of 20 sensors published as fast as paho goes, each a raise or a
             clear, one dashboard connected: durable alert changes per second, from the first
             publish to the last event on the dashboard (each event is stored before it is
             told), and the events that never came (lost); then a new dashboard's hello must
             carry the last seq (the database has them all)

Every trigger toggles a door sensor (rule `equals = true`, clear `equals = false`), so each one
raises or clears an alert, and trigger k is the event with seq base + k. `--quick` is the CI
smoke test (under a minute): 40 latency samples, 100 clients with 10 triggers, 2,000 readings,
Telegram once (all-in-one), no split Telegram process; it asserts nothing about timing. The exit
status is 1 when any event was lost or a section failed, 0 otherwise. Logs and configs go to a
temporary directory, removed at the end unless --keep or a section failed. The gateway's modules
(and --before's) are compiled first, as an install has them (`compile_gateway`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    TOKEN,
    Proc,
    Publisher,
    Services,
    door_payload,
    free_port,
    gateway_argv,
    metric_sum,
    percentile,
)
from bench.wsclients import ClientPool  # noqa: E402

SECTIONS = ("startup", "rss", "fanout", "latency", "ingest", "telegram", "footprint", "storm")
SUBJECTS = ("floor", "memory", "redis")
INGEST_SENSORS = 8
STORM_SENSORS = 20
OK = "gateway_mqtt_messages_total"
TELEGRAM_TOKEN = "123456:BENCH-token-for-the-gateway-bench_01"
CHATS = [5000 + i for i in range(60)]
# `--history KEEP`: every gateway's [history] keep (unset: the default, 7d; "0": no history).
HISTORY_KEEP: str | None = None

GATEWAY_CONFIG = """
[gateway]
site = "bench"
state_dir = "{state}"
channel_layer = "{layer}"

[http]
bind = "127.0.0.1:{http}"
# The storm's one dashboard reads 2-3 MB/s of events, in a worker sharing 2 cores with the gateway,
# mosquitto and the publisher: the default 256 KiB would drop it as a slow client (the product's
# protection, not what the storm measures). 8 MiB: it reads all of it, however late.
websocket_send_buffer = 8388608

[auth]
tokens = {{ bench = "{token}" }}

[mqtt]
url = "mqtt://127.0.0.1:{mqtt}"
client_id = "{client_id}"
protocol = "{protocol}"
shared_group = "{group}"

[[sensors]]
id = "door"
name = "Door"
zone = "house"
topic = "bench/door"
format = "json"
field = "open"

[[rules]]
id = "door-open"
sensor = "door"
when = {{ equals = true }}
clear = {{ equals = false }}
severity = "critical"
message = "{{sensor.name}} open"
{ingest}
{storm}
# Ingest: threshold rules on every reading; "hot" fires on about 1 reading in 1,000.
[[rules]]
id = "hot"
zone = "ingest"
when = {{ above = 29.99 }}
clear = {{ below = 21 }}
severity = "warning"
message = "{{sensor.name}} at {{value}}"

[[rules]]
id = "frozen"
zone = "ingest"
when = {{ below = 0 }}
severity = "info"
"""
STORM_SENSOR = """
[[sensors]]
id = "storm-{i}"
name = "Storm {i}"
zone = "storm"
topic = "bench/storm/{i}"
format = "json"
field = "on"

[[rules]]
id = "storm-{i}"
sensor = "storm-{i}"
when = {{ equals = true }}
clear = {{ equals = false }}
severity = "warning"
"""
INGEST_SENSOR = """
[[sensors]]
id = "temp-{i}"
name = "Temperature {i}"
zone = "ingest"
topic = "bench/temp/{i}"
format = "json"
field = "temperature"
"""


@dataclass
class Options:
    quick: bool
    sections: set[str]
    latency_samples: int
    latency_rate: float
    fanout: dict[int, int]  # clients -> triggers; the biggest first (it also measures RSS per socket)
    fanout_rate: float
    ingest_messages: int
    ingest_runs: int  # the best of these bursts counts: a burst is short, background load is not
    settle: float
    workers: int
    log_level: str
    keep: bool
    subjects: list[str]
    # Another checkout of the gateway, measured as the subject "before" (memory layer) in the same run.
    before: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        sections = set(SECTIONS)
        if args.only:
            sections = {s.strip() for part in args.only for s in part.split(",") if s.strip()}
            unknown = sections - set(SECTIONS)
            if unknown:
                raise SystemExit(
                    f"--only: unknown section(s) {', '.join(sorted(unknown))}; known: {SECTIONS}"
                )
        quick = args.quick
        return cls(
            quick=quick,
            sections=sections,
            latency_samples=args.samples or (40 if quick else 400),
            latency_rate=args.rate,
            # 1,000 clients get fewer triggers: a gateway that falls behind there takes long to drain.
            fanout={100: 10} if quick else {1000: 20, 100: 50},
            fanout_rate=10.0 if quick else 5.0,
            ingest_messages=args.ingest or (2000 if quick else 10000),
            ingest_runs=1 if quick else 3,
            settle=0.5 if quick else 2.0,
            workers=4,
            log_level=args.log_level,
            keep=args.keep,
            subjects=subjects(args),
            before=Path(args.before).resolve() if args.before else None,
        )


def subjects(args: argparse.Namespace) -> list[str]:
    chosen = [x for x in SUBJECTS if not args.subjects or x in args.subjects.split(",")]
    if args.before:  # floor, before, memory: the old and the new gateway side by side
        chosen = [x for x in chosen if x != "redis"]
        chosen.insert(1 if chosen[:1] == ["floor"] else 0, "before")
    return chosen


# ---------------------------------------------------------------------------------------------- subjects
class Subject:
    """One process under test: the floor or a gateway; it knows its WebSocket URL and its door's state."""

    def __init__(self, name: str, proc: Proc, ws_port: int, http_port: int | None) -> None:
        self.name, self.proc, self.ws_port, self.http_port = name, proc, ws_port, http_port
        self.door_open = False
        self.triggers = 0  # door toggles published so far: trigger k raises or clears seq seq_base + k
        self.seq_base: int | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws/alerts/?token={TOKEN}"

    @property
    def is_gateway(self) -> bool:
        return self.http_port is not None

    def next_door(self) -> str:
        self.door_open = not self.door_open
        return door_payload(self.door_open)


def write_gateway_config(
    work: Path,
    name: str,
    services: Services,
    layer: str,
    http: int,
    *,
    state: str | None = None,
    protocol: str = "auto",
    group: str = "",
    telegram: str = "",
) -> Path:
    ingest = "".join(INGEST_SENSOR.format(i=i) for i in range(INGEST_SENSORS))
    text = GATEWAY_CONFIG.format(
        state=work / (state or name),
        layer=layer,
        http=http,
        token=TOKEN,
        mqtt=services.mqtt_port,
        client_id=f"gateway-bench-{name}",
        protocol=protocol,
        group=group,
        ingest=ingest,
        storm="".join(STORM_SENSOR.format(i=i) for i in range(STORM_SENSORS)),
    )
    if HISTORY_KEEP is not None:
        text += f'\n[history]\nkeep = "{HISTORY_KEEP}"\n'
    path = work / f"{name}.toml"
    path.write_text(text + telegram)
    return path


def start_floor(work: Path, services: Services) -> Subject:
    port = free_port()
    argv = [sys.executable, str(ROOT / "bench" / "floor.py"), "--mqtt", f"127.0.0.1:{services.mqtt_port}"]
    argv += ["--ws", f"127.0.0.1:{port}", "--topic", "bench/#"]
    return Subject("floor", Proc("floor", argv, work), port, None)


def start_gateway(
    work: Path,
    name: str,
    services: Services,
    layer: str,
    opts: Options,
    protocols: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Subject:
    http = free_port()
    config = write_gateway_config(work, name, services, layer, http)
    proc = Proc(name, gateway_argv(config, protocols, opts.log_level), work, http_port=http, env=env)
    return Subject(name, proc, http, http)


# ---------------------------------------------------------------------------------------------- measures
def analyse(first_seq: int, sent: list[float], clients: list[list[tuple[int, float]]]) -> dict[str, Any]:
    """Latencies (ms) from the publish of trigger i to its alert event (seq first_seq + i) at each client.

    An event that never reached a client (`ClientPool.wait` gave up: nothing arrived for a few
    seconds) is lost for that client.
    """
    n = len(sent)
    latencies: list[float] = []
    lost = 0
    for events in clients:
        got = 0
        for seq, t in events:
            i = seq - first_seq
            if 0 <= i < n:
                got += 1
                latencies.append((t - sent[i]) * 1000)
        lost += n - got
    out = {
        "clients": len(clients),
        "triggers": n,
        "samples": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2) if latencies else None,
        "lost": lost,
    }
    if len(clients) == 1:  # in publish order, to see whether slow ones come in bursts or periodically
        out["samples_ms"] = [round(x, 2) for x in latencies]
    return out


async def connect(subject: Subject, pool: ClientPool, n: int) -> float:
    """Open `n` WebSocket clients on the subject; the seconds it took. The first hello fixes `seq_base`."""
    hello_seq, seconds = await pool.connect(subject.ws_url, n)
    if subject.seq_base is None:
        subject.seq_base = hello_seq - subject.triggers
    return seconds


async def triggers(
    subject: Subject, pool: ClientPool, pub: Publisher, n: int, rate: float, topic: str = "bench/door"
) -> dict[str, Any]:
    """`n` door toggles at `rate`/s on an open-loop schedule, then every client's events; analysed."""
    assert subject.seq_base is not None, "connect a client first"
    first_seq = subject.seq_base + subject.triggers + 1
    sent: list[float] = []
    start = time.monotonic()
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent.append(pub.publish(topic, subject.next_door()))
        subject.triggers += 1
    per_client = await pool.wait(first_seq, first_seq + n - 1)
    return analyse(first_seq, sent, per_client)


async def measure_start(subject: Subject, opts: Options) -> dict[str, Any]:
    await subject.proc.wait_ready()
    result: dict[str, Any] = {"start_to_ready_s": round(subject.proc.ready_s or float("nan"), 3)}
    if subject.proc.healthz_s is not None:
        result["start_to_healthz_s"] = round(subject.proc.healthz_s, 3)
    if subject.is_gateway:
        result["ready_in_log_s"] = subject.proc.ready_in()
    await asyncio.sleep(opts.settle)
    result["idle_rss_mib"] = round(subject.proc.rss(), 1)
    return result


async def warm_up(subject: Subject, pool: ClientPool, pub: Publisher) -> None:
    """A few alerts first: the first raise pays for lazy imports and the first database write."""
    await connect(subject, pool, 1)
    await triggers(subject, pool, pub, 4, 20.0)
    await pool.close()


async def fanout(
    subject: Subject, pool: ClientPool, pub: Publisher, opts: Options, rss: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size, n in opts.fanout.items():
        before = subject.proc.rss()
        connect_s = await connect(subject, pool, size)
        if rss and size == max(opts.fanout):
            await asyncio.sleep(opts.settle)
            after = subject.proc.rss()
            out["rss_per_ws_kib"] = round((after - before) * 1024 / size, 1)
            out["rss_with_clients_mib"] = round(after, 1)
            out["rss_clients"] = size
        await asyncio.sleep(0.3)
        started = time.monotonic()
        result = await triggers(subject, pool, pub, n, opts.fanout_rate)
        result["phase_s"] = round(time.monotonic() - started, 1)
        result["connect_s"] = round(connect_s, 2)
        await pool.close()
        out[str(size)] = result
        await asyncio.sleep(0.5)
    return out


def internal(subject: Subject) -> tuple[float, float]:
    """The gateway's own histogram: (sum, count) of MQTT receipt -> WebSocket hand-off seconds."""
    assert subject.http_port is not None
    name, labels = "gateway_trigger_to_delivery_seconds", {"protocol": "websocket"}
    return metric_sum(subject.http_port, f"{name}_sum", labels), metric_sum(
        subject.http_port, f"{name}_count", labels
    )


async def latency(subject: Subject, pool: ClientPool, pub: Publisher, opts: Options) -> dict[str, Any]:
    await connect(subject, pool, 1)
    await asyncio.sleep(0.2)
    before = internal(subject) if subject.is_gateway else None
    result = await triggers(subject, pool, pub, opts.latency_samples, opts.latency_rate)
    await pool.close()
    result["rate_per_s"] = opts.latency_rate
    if before is not None:
        # Where the time goes: inside the gateway (its histogram) or on the way in and out.
        after = internal(subject)
        if after[1] > before[1]:
            result["gateway_internal_mean_ms"] = round(
                (after[0] - before[0]) / (after[1] - before[1]) * 1000, 2
            )
    return result


async def storm(subject: Subject, pool: ClientPool, pub: Publisher, n: int) -> dict[str, Any]:
    """`n` toggles of the storm sensors, each a raise or a clear, as fast as the publisher goes."""
    base, _ = await pool.connect(subject.ws_url, 1)
    payloads = [
        (
            f"bench/storm/{k % STORM_SENSORS}",
            b'{"on":true}' if (k // STORM_SENSORS) % 2 == 0 else b'{"on":false}',
        )
        for k in range(n)
    ]
    first, published = await asyncio.to_thread(_burst, pub, payloads)
    await asyncio.to_thread(pub.flush)
    events = (await pool.wait(base + 1, base + n))[0]
    await pool.close()
    got = {seq for seq, _ in events}
    done = max((t for _, t in events), default=first)
    # Stored: a dashboard that comes now is told of every one of them in its hello.
    after, _ = await pool.connect(subject.ws_url, 1)
    await pool.close()
    return {
        "changes": n,
        "changes_per_s": round(len(got) / max(done - first, 1e-9)),
        "publish_s": round(published - first, 3),
        "seconds": round(done - first, 3),
        "lost": n - len(got),
        "stored_lost": max(0, base + n - after),
    }


def ingest_payloads(n: int) -> list[tuple[str, bytes]]:
    """Readings of INGEST_SENSORS sensors, the same for every subject: uniform 20..30 C."""
    rng = random.Random(8)
    out = []
    for i in range(n):
        reading = {
            "temperature": round(20 + 10 * rng.random(), 2),
            "humidity": round(40 + 20 * rng.random(), 1),
            "battery": 90,
            "linkquality": 120,
        }
        out.append((f"bench/temp/{i % INGEST_SENSORS}", json.dumps(reading).encode()))
    return out


def _burst(pub: Publisher, payloads: list[tuple[str, bytes]]) -> tuple[float, float]:
    first = time.time()
    for topic, payload in payloads:
        pub.client.publish(topic, payload, qos=1)
    return first, time.time()


async def ingest_gateways(ports: list[int], pub: Publisher, n: int, stall: float = 5.0) -> dict[str, Any]:
    """Publish the burst; poll the /metrics of every process until they handled `n` or stopped moving."""

    def handled() -> float:
        return sum(metric_sum(port, OK, {"outcome": "ok"}) for port in ports)

    payloads = ingest_payloads(n)
    base = await asyncio.to_thread(handled)
    first, published = await asyncio.to_thread(_burst, pub, payloads)
    await asyncio.to_thread(pub.flush)
    acked = time.time()
    samples: list[tuple[float, float]] = [(first, 0.0)]
    moved = time.monotonic()
    while True:
        count = await asyncio.to_thread(handled) - base
        now = time.time()
        if count != samples[-1][1]:
            moved = time.monotonic()
        samples.append((now, count))
        if count >= n or time.monotonic() - moved > stall:
            break
        await asyncio.sleep(0.05)
    done, count = samples[-1]
    if count >= n and len(samples) >= 2:
        # The n-th message was handled between the last two polls: interpolate.
        (t0, c0), (t1, c1) = samples[-2], samples[-1]
        done = t0 + (t1 - t0) * (n - c0) / max(c1 - c0, 1)
    handled_n = int(min(count, n))
    return _ingest_result(n, handled_n, first, done, published, acked)


async def ingest_floor(subject: Subject, pool: ClientPool, pub: Publisher, n: int) -> dict[str, Any]:
    """The floor's seq counts every message it forwards: the burst is the next `n` seqs."""
    assert subject.seq_base is not None
    lo = subject.seq_base + subject.triggers + 1
    subject.triggers += n
    payloads = ingest_payloads(n)
    first, published = await asyncio.to_thread(_burst, pub, payloads)
    await asyncio.to_thread(pub.flush)
    acked = time.time()
    events = (await pool.wait(lo, lo + n - 1))[0]
    handled_n = len({seq for seq, _ in events})
    done = max((t for _, t in events), default=first)
    return _ingest_result(n, handled_n, first, done, published, acked)


def _ingest_result(
    n: int, handled: int, first: float, done: float, published: float, acked: float
) -> dict[str, Any]:
    span = max(done - first, 1e-6)
    return {
        "published": n,
        "handled": handled,
        "lost": n - handled,
        "seconds": round(span, 3),
        "messages_per_s": round(handled / span),
        # If this is close to messages_per_s, the load generator was the limit, not the subject.
        "publish_rate_per_s": round(n / max(published - first, 1e-6)),
        "broker_acked_rate_per_s": round(n / max(acked - first, 1e-6)),
    }


async def ingest(subject: Subject, pool: ClientPool, pub: Publisher, opts: Options) -> dict[str, Any]:
    # One dashboard open, as on a real box; for the floor it is where the messages go.
    await connect(subject, pool, 1)
    try:
        runs = []
        for _ in range(opts.ingest_runs):
            if subject.is_gateway:
                assert subject.http_port is not None
                runs.append(await ingest_gateways([subject.http_port], pub, opts.ingest_messages))
            else:
                runs.append(await ingest_floor(subject, pool, pub, opts.ingest_messages))
            await asyncio.sleep(0.5)
        return best(runs)
    finally:
        # The gateway's "hot" alerts take seqs too: the next connect reads the base from its hello again.
        if subject.is_gateway:
            subject.seq_base = None
        await pool.close()


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest burst, with every burst's rate and the losses of all of them."""
    top = dict(max(runs, key=lambda r: r["messages_per_s"]))
    if len(runs) > 1:
        top["lost"] = sum(r["lost"] for r in runs)
        top["runs_messages_per_s"] = [r["messages_per_s"] for r in runs]
    return top


async def shared_ingest(work: Path, services: Services, pub: Publisher, opts: Options) -> dict[str, Any]:
    """Two `--protocol mqtt --protocol web` processes: one MQTT 5 shared subscription, one Redis layer."""
    procs: list[Proc] = []
    ports: list[int] = []
    try:
        for name in ("shared-a", "shared-b"):
            http = free_port()
            config = write_gateway_config(
                work, name, services, services.redis_url, http, state="shared", protocol="5", group="bench"
            )
            proc = Proc(name, gateway_argv(config, ("mqtt", "web"), opts.log_level), work, http_port=http)
            procs.append(proc)
            ports.append(http)
            await proc.wait_ready()  # one after the other: the second must not race the first's migrations
        await asyncio.sleep(opts.settle)
        runs = []
        for _ in range(max(1, opts.ingest_runs - 1)):  # two at most: a burst takes ~10 s here
            runs.append(await ingest_gateways(ports, pub, opts.ingest_messages))
            await asyncio.sleep(0.5)
        result = best(runs)
        result["processes"] = len(procs)
        result["per_process_handled"] = [int(metric_sum(p, OK, {"outcome": "ok"})) for p in ports]
        return result
    finally:
        for proc in procs:
            proc.stop()


# ---------------------------------------------------------------------------------------------- telegram
def telegram_section(api: Any) -> str:
    return (
        f'\n[telegram]\ntoken = "{TELEGRAM_TOKEN}"\napi_url = "{api.base_url}"\n'
        f"allowed_chats = {json.dumps(CHATS)}\n"
    )


async def sixty_chats(api: Any, pub: Publisher) -> dict[str, Any]:
    """Subscribe 60 chats, let the limits' windows pass, then time one alert to all 60."""
    for chat in CHATS:
        api.user_says(chat, "/subscribe")
    await api.wait_sent(len(CHATS), timeout=60, method="sendMessage")
    await asyncio.sleep(1.5)  # the per-chat second and the global 30/s window of the replies
    before = len([m for m in api.sent if m["method"] == "sendMessage"])
    violations_before = dict(api.violations)
    sent = time.monotonic()
    pub.publish("bench/door", door_payload(True))
    got = await api.wait_sent(before + len(CHATS), timeout=60, method="sendMessage")
    new = got[before:]
    await asyncio.sleep(1.0)  # anything sent too early or twice would show up now
    violations = {k: v - violations_before.get(k, 0) for k, v in api.violations.items()}
    return {
        "chats": len({m["chat_id"] for m in new}),
        "first_chat_ms": round((min(m["at"] for m in new) - sent) * 1000, 1),
        "all_chats_s": round(max(m["at"] for m in new) - sent, 3),
        "violations": {k: v for k, v in violations.items() if v},
        "violations_total": sum(violations.values()),
        "lost": len(CHATS) - len({m["chat_id"] for m in new}),
    }


async def telegram_memory(work: Path, services: Services, pub: Publisher, opts: Options) -> dict[str, Any]:
    """All-in-one with Telegram on the stand-in: its footprint, then one alert to 60 chats."""
    from tests.telegram_standin import BotApiStandin

    async with BotApiStandin(token=TELEGRAM_TOKEN) as api:
        http = free_port()
        config = write_gateway_config(
            work, "tg-memory", services, "memory", http, telegram=telegram_section(api)
        )
        proc = Proc("tg-memory", gateway_argv(config, (), opts.log_level), work, http_port=http)
        try:
            subject = Subject("tg-memory", proc, http, http)
            footprint = await measure_start(subject, opts)
            chats = await sixty_chats(api, pub)
            # Once updates were read and alerts sent: what building aiogram's models on use cost.
            footprint["rss_after_use_mib"] = round(proc.rss(), 1)
        finally:
            proc.stop()
    return {"footprint": footprint, "sixty_chats": chats}


async def split_trio(
    work: Path, services: Services, pub: Publisher, opts: Options, telegram: bool
) -> dict[str, Any]:
    """`--protocol web`, `--protocol mqtt` and (with `telegram`) `--protocol telegram` on one Redis layer."""
    from tests.telegram_standin import BotApiStandin

    out: dict[str, Any] = {}
    procs: list[Proc] = []
    async with BotApiStandin(token=TELEGRAM_TOKEN) as api:
        try:
            http = free_port()
            section = telegram_section(api) if telegram else ""
            config = write_gateway_config(
                work, "split", services, services.redis_url, http, state="split", telegram=section
            )
            for protocol in ("web", "mqtt", "telegram")[: 3 if telegram else 2]:
                port = http if protocol == "web" else None
                proc = Proc(
                    f"split-{protocol}", gateway_argv(config, (protocol,), opts.log_level), work, port
                )
                procs.append(proc)
                subject = Subject(proc.name, proc, http, port)
                out[protocol] = await measure_start(subject, opts)
            if telegram:
                out["sixty_chats"] = await sixty_chats(api, pub)
        finally:
            for proc in procs:
                proc.stop()
    return out


def compile_gateway(*trees: Path | None) -> None:
    """Each gateway tree's modules compiled, as an install has them (pip compiles what it installs).

    Run from a checkout with PYTHONDONTWRITEBYTECODE=1 (this sandbox sets it), every start of
    the gateway compiled its own ~120 modules from source: 0.1-0.2 s that no installed gateway
    pays and the floor (one file, the rest installed packages) never did. The files go to the
    trees' `__pycache__` directories (ignored by git).
    """
    import compileall

    for tree in trees:
        if tree is not None:
            for package in ("gateway", "protocols", "consumers"):
                compileall.compile_dir(tree / package, quiet=1)


def import_floor() -> dict[str, Any]:
    """RSS of a Python that imported daphne, channels, Django and paho and nothing else (issue 8's 66 MiB)."""
    code = (
        "import daphne.server, channels.layers, channels.generic.websocket, django.core.handlers.asgi, "
        "paho.mqtt.client; print(open('/proc/self/status').read())"
    )
    started = time.monotonic()
    text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    elapsed = time.monotonic() - started
    rss = next(int(line.split()[1]) / 1024 for line in text.splitlines() if line.startswith("VmRSS:"))
    return {"idle_rss_mib": round(rss, 1), "start_to_ready_s": round(elapsed, 3)}


# ---------------------------------------------------------------------------------------------- the run
async def run_subject(
    name: str, work: Path, services: Services, pool: ClientPool, pub: Publisher, opts: Options
) -> dict[str, Any]:
    if name == "floor":
        subject = start_floor(work, services)
    elif name == "before":
        assert opts.before is not None
        subject = start_gateway(work, name, services, "memory", opts, env={"PYTHONPATH": str(opts.before)})
    else:
        subject = start_gateway(
            work, name, services, "memory" if name == "memory" else services.redis_url, opts
        )
    out: dict[str, Any] = {}
    try:
        print(f"[{name}] starting", flush=True)
        out["startup"] = await measure_start(subject, opts)
        print(f"[{name}] ready in {out['startup']['start_to_ready_s']} s", flush=True)
        need_traffic = opts.sections & {"fanout", "latency", "rss"}
        if need_traffic:
            await warm_up(subject, pool, pub)
        # Latency first, on a quiet process: it is the figure users feel most.
        if "latency" in opts.sections:
            out["latency"] = await latency(subject, pool, pub, opts)
            print(f"[{name}] latency done: {summary(out['latency'])}", flush=True)
            await asyncio.sleep(opts.settle / 2)
        if opts.sections & {"fanout", "rss"}:
            if "fanout" not in opts.sections:  # rss alone: idle sockets only, no triggers
                size = max(opts.fanout)
                before = subject.proc.rss()
                await connect(subject, pool, size)
                await asyncio.sleep(opts.settle)
                out["rss"] = {"rss_per_ws_kib": round((subject.proc.rss() - before) * 1024 / size, 1)}
                await pool.close()
            else:
                result = await fanout(subject, pool, pub, opts, rss="rss" in opts.sections)
                if "rss_per_ws_kib" in result:
                    out["rss"] = {
                        k: result.pop(k) for k in ("rss_per_ws_kib", "rss_with_clients_mib", "rss_clients")
                    }
                out["fanout"] = result
                print(f"[{name}] fan-out done: {summary(result)}", flush=True)
            await asyncio.sleep(opts.settle / 2)
        if "ingest" in opts.sections:
            out["ingest"] = await ingest(subject, pool, pub, opts)
            print(f"[{name}] ingest done: {out['ingest']['messages_per_s']} msg/s", flush=True)
        if "storm" in opts.sections and subject.is_gateway:
            out["storm"] = await storm(subject, pool, pub, 500 if opts.quick else 10000)
            print(f"[{name}] storm done: {out['storm']['changes_per_s']} changes/s", flush=True)
    finally:
        with contextlib.suppress(Exception):
            await pool.close()  # after a failure: no client of this subject may stay in the pool
        subject.proc.stop()
        code = subject.proc.proc.returncode
        if code not in (0, -15):
            out["exit_code"] = code
    return out


def summary(result: dict[str, Any]) -> str:
    if "p50_ms" in result:
        return f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, lost {result['lost']}"
    return "; ".join(f"{k}: {summary(v)}" for k, v in result.items() if isinstance(v, dict))


PHASES: dict[str, float] = {}


async def guarded(
    results: dict[str, Any], key: str, errors: list[str], make: Callable[[], Awaitable[Any]]
) -> None:
    started = time.monotonic()
    try:
        results[key] = await make()
    except Exception as err:
        traceback.print_exc()
        errors.append(f"{key}: {type(err).__name__}: {err}")
        results[key] = {"error": f"{type(err).__name__}: {err}"}
    finally:
        PHASES[key] = round(time.monotonic() - started, 1)


async def run(opts: Options) -> dict[str, Any]:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    results: dict[str, Any] = {
        "meta": {
            "quick": opts.quick,
            "sections": sorted(opts.sections),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "log_level": opts.log_level,
            "latency_samples": opts.latency_samples,
            "latency_rate_per_s": opts.latency_rate,
            "fanout_clients_to_triggers": opts.fanout,
            "fanout_rate_per_s": opts.fanout_rate,
            "ingest_messages": opts.ingest_messages,
            "ingest_runs": opts.ingest_runs,
            "ws_worker_processes": opts.workers,
            "workdir": str(work),
        },
        "subjects": {},
    }
    errors: list[str] = []
    compile_gateway(ROOT, opts.before)
    services = Services(work)
    pool: ClientPool | None = None
    pub: Publisher | None = None
    try:
        pool = ClientPool(opts.workers)  # before any thread: the workers are spawned, not forked
        services.start()
        pub = Publisher(services.mqtt_port, "run")
        per_subject = opts.sections & {"startup", "rss", "fanout", "latency", "ingest", "footprint", "storm"}
        if per_subject:
            for name in opts.subjects:
                await guarded(
                    results["subjects"],
                    name,
                    errors,
                    partial(run_subject, name, work, services, pool, pub, opts),
                )
        if "ingest" in opts.sections:
            print("[shared] two MQTT processes on one shared subscription", flush=True)
            await guarded(results, "shared_ingest", errors, lambda: shared_ingest(work, services, pub, opts))
        if "telegram" in opts.sections or "footprint" in opts.sections:
            print("[telegram] all-in-one with Telegram (stand-in)", flush=True)
            await guarded(
                results, "telegram_memory", errors, lambda: telegram_memory(work, services, pub, opts)
            )
        if "footprint" in opts.sections or ("telegram" in opts.sections and not opts.quick):
            with_telegram = not opts.quick and bool(opts.sections & {"telegram", "footprint"})
            print(f"[split] web, mqtt{', telegram' if with_telegram else ''} over Redis", flush=True)
            await guarded(
                results, "split", errors, lambda: split_trio(work, services, pub, opts, with_telegram)
            )
        if "footprint" in opts.sections:
            await guarded(results, "import_floor", errors, lambda: asyncio.to_thread(import_floor))
    finally:
        if pub is not None:
            pub.close()
        services.stop()
        if pool is not None:
            pool.shutdown()
    results["errors"] = errors
    results["losses"] = losses(results)
    results["ratios"] = ratios(results)
    results["meta"]["phase_s"] = dict(PHASES)
    results["wall_s"] = round(time.monotonic() - started, 1)
    results["meta"]["kept"] = opts.keep or bool(errors)
    if not results["meta"]["kept"]:
        shutil.rmtree(work, ignore_errors=True)
    return results


# ---------------------------------------------------------------------------------------------- report
def get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


# (label, path in a subject, target (issues 8 and 19) on the memory ratio or value)
ROWS: list[tuple[str, tuple[str, ...], str]] = [
    ("latency p50 ms", ("latency", "p50_ms"), "<=1.3x"),
    ("latency p99 ms", ("latency", "p99_ms"), "<=1.8x"),
    ("latency lost", ("latency", "lost"), "0"),
    ("  of it in the gateway ms", ("latency", "gateway_internal_mean_ms"), ""),
    ("fan-out 100 p50 ms", ("fanout", "100", "p50_ms"), ""),
    ("fan-out 100 p99 ms", ("fanout", "100", "p99_ms"), "<=1.3x"),
    ("fan-out 100 lost", ("fanout", "100", "lost"), "0"),
    ("fan-out 1000 p50 ms", ("fanout", "1000", "p50_ms"), ""),
    ("fan-out 1000 p99 ms", ("fanout", "1000", "p99_ms"), "<=1.0x"),
    ("fan-out 1000 lost", ("fanout", "1000", "lost"), "0"),
    ("ingest msg/s", ("ingest", "messages_per_s"), ">=0.7x"),
    ("ingest lost", ("ingest", "lost"), "0"),
    ("alert storm changes/s", ("storm", "changes_per_s"), ">=5000/s"),
    ("alert storm lost", ("storm", "lost"), "0"),
    ("  not in the database", ("storm", "stored_lost"), "0"),
    ("idle RSS MiB", ("startup", "idle_rss_mib"), "<=70MiB"),
    ("RSS per idle WS KiB", ("rss", "rss_per_ws_kib"), "<=20KiB"),
    ("start -> READY=1 s", ("startup", "start_to_ready_s"), "<=1s"),
    ("start -> /healthz 200 s", ("startup", "start_to_healthz_s"), ""),
]


def ratio(value: Any, floor: Any) -> float | None:
    if not isinstance(value, int | float) or not isinstance(floor, int | float) or not floor:
        return None
    return round(value / floor, 2)


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    subjects = results.get("subjects", {})
    out: dict[str, Any] = {}
    for label, path, _ in ROWS:
        floor = get(subjects, "floor", *path)
        row = {name: ratio(get(subjects, name, *path), floor) for name in ("before", "memory", "redis")}
        if "lost" not in label and any(v is not None for v in row.values()):
            out[label] = row
    shared = get(results, "shared_ingest", "messages_per_s")
    floor_ingest = get(subjects, "floor", "ingest", "messages_per_s")
    if shared is not None:
        out["ingest msg/s, 2 shared MQTT processes (redis)"] = {"redis": ratio(shared, floor_ingest)}
    return out


def losses(results: dict[str, Any]) -> list[str]:
    found = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "lost" and isinstance(value, int) and value:
                    found.append(f"{path}: {value} lost")
                walk(value, f"{path}.{key}" if path else key)

    walk(
        {k: v for k, v in results.items() if k in ("subjects", "shared_ingest", "telegram_memory", "split")},
        "",
    )
    return found


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def check(target: str, value: Any, r: float | None) -> str:
    """ok/MISS against a target of issues 8 and 19 (ratios on the memory layer)."""
    if not target or value is None:
        return ""
    try:
        if target == "0":
            good = value == 0
        elif target.endswith("x"):
            if r is None:
                return ""
            limit = float(target[2:-1])
            good = r <= limit if target.startswith("<=") else r >= limit
        else:
            number = float("".join(ch for ch in target[2:] if ch.isdigit() or ch == "."))
            good = value >= number if target.startswith(">=") else value <= number
    except ValueError:
        return ""
    return "ok" if good else "MISS"


WIDTHS = (26, 10, 11, 9, 11, 9, 12, 5)


def line(*cells: str, widths: tuple[int, ...] = WIDTHS) -> str:
    """The first cell left-aligned, the next five right-aligned, the rest left-aligned after a gap."""
    out = []
    for i, (cell, width) in enumerate(zip(cells, widths, strict=False)):
        out.append(f"{cell:<{width}}" if i == 0 or i > 5 else f"{cell:>{width}}")
        if i == 5:
            out.append("   ")
    return "".join(out).rstrip()


def times(r: float | None, show: bool = True) -> str:
    return f"{fmt(r)}x" if show and r is not None else ""


def print_report(results: dict[str, Any]) -> None:
    subjects = results.get("subjects", {})
    meta = results["meta"]
    print()
    print(f"gateway vs the raw floor -- {meta['machine']}, Python {meta['python']}")
    print(
        "x floor = gateway / floor, both measured in this run; targets: issues 8 and 19, on the memory layer"
        + (" [QUICK: smoke test, timings mean nothing]" if meta["quick"] else "")
    )
    # Two gateway columns: memory and redis, or with --before, before and memory (its redis is not run).
    first, second = ("before", "memory") if "before" in subjects else ("memory", "redis")
    head = line("", "floor", first, "x floor", second, "x floor", "target")
    print(head)
    print("-" * max(len(head), 96))
    for label, path, target in ROWS:
        floor = get(subjects, "floor", *path)
        mem = get(subjects, first, *path)
        red = get(subjects, second, *path)
        if floor is None and mem is None and red is None:
            continue
        rm, rr = ratio(mem, floor), ratio(red, floor)
        show = "lost" not in label
        cells = (label, fmt(floor), fmt(mem), times(rm, show), fmt(red), times(rr, show))
        # The targets are the memory layer's, whichever column it is in.
        mine, r = (mem, rm) if first == "memory" else (red, rr)
        print(line(*cells, target, check(target, mine, r)))
    shared = results.get("shared_ingest")
    if isinstance(shared, dict) and "messages_per_s" in shared:
        r = ratio(shared["messages_per_s"], get(subjects, "floor", "ingest", "messages_per_s"))
        rate = fmt(shared["messages_per_s"])
        print(line("ingest, 2 MQTT, shared", "", "", "", rate, times(r), ">=1.3x", check(">=1.3x", 1, r)))
        per_process = ", ".join(fmt(n) for n in shared["per_process_handled"])
        print(line("  lost (handled each)", "", "", "", fmt(shared["lost"]), "", f"({per_process})"))
    tg_mem = get(results, "telegram_memory", "sixty_chats")
    tg_red = get(results, "split", "sixty_chats")
    if tg_mem or tg_red:
        for label, key in (
            ("60 Telegram chats s", "all_chats_s"),
            ("  first chat ms", "first_chat_ms"),
            ("  chats reached", "chats"),
            ("  limit violations", "violations_total"),
        ):
            mem, red = get(tg_mem, key), get(tg_red, key)
            print(
                line(label, "n/a", fmt(mem), "n/a" if mem is not None else "", fmt(red), "n/a" if red else "")
            )
        print("  (Telegram: memory = all-in-one; redis = split web, mqtt and telegram processes)")
    telegram_on = get(results, "telegram_memory", "footprint")
    if isinstance(telegram_on, dict):
        rss, ready = telegram_on.get("idle_rss_mib"), telegram_on.get("start_to_ready_s")
        print(
            line("with Telegram: RSS MiB", "", "", "", fmt(rss), "", "<=110MiB", check("<=110MiB", rss, None))
        )
        print(line("  RSS after 60 chats MiB", "", "", "", fmt(telegram_on.get("rss_after_use_mib"))))
        print(
            line("  start -> READY=1 s", "", "", "", fmt(ready), "", "<=1.5s", check("<=1.5s", ready, None))
        )
    print_footprint(results)
    if results["errors"]:
        print("\nERRORS:")
        for error in results["errors"]:
            print(f"  {error}")
    if results["losses"]:
        print("\nLOSSES:")
        for loss in results["losses"]:
            print(f"  {loss}")
    phases = ", ".join(f"{k} {v}s" for k, v in results["meta"].get("phase_s", {}).items())
    print(f"\nwall time {results['wall_s']} s ({phases})")
    if results["meta"].get("kept"):
        print(f"logs and configs: {results['meta']['workdir']}")


def print_footprint(results: dict[str, Any]) -> None:
    subjects = results.get("subjects", {})
    rows: list[tuple[str, Any]] = [
        ("imports only (daphne, channels, Django, paho)", results.get("import_floor")),
        ("raw floor (bench/floor.py)", get(subjects, "floor", "startup")),
        ("all-in-one, memory, no Telegram", get(subjects, "memory", "startup")),
        ("all-in-one, redis, no Telegram", get(subjects, "redis", "startup")),
        ("all-in-one, memory, Telegram (stand-in)", get(results, "telegram_memory", "footprint")),
        ("split --protocol web (redis)", get(results, "split", "web")),
        ("split --protocol mqtt (redis)", get(results, "split", "mqtt")),
        ("split --protocol telegram (redis)", get(results, "split", "telegram")),
    ]
    rows = [(label, row) for label, row in rows if isinstance(row, dict) and "idle_rss_mib" in row]
    if not rows:
        return
    widths = (46, 13, 12, 13, 15)
    print()
    head = line(
        "footprint per runtime shape",
        "idle RSS MiB",
        "-> READY s",
        "-> healthz s",
        "ready in (log)",
        widths=widths,
    )
    print(head)
    print("-" * len(head))
    for label, row in rows:
        keys = ("idle_rss_mib", "start_to_ready_s", "start_to_healthz_s", "ready_in_log_s")
        print(line(label, *(fmt(row.get(k)) for k in keys), widths=widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The gateway against the raw floor, in one run (issue 8).")
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke test: small, checks completion and loss only"
    )
    parser.add_argument(
        "--json", default=str(ROOT / "bench" / "results.json"), help="where to write the numbers"
    )
    parser.add_argument(
        "--only", action="append", help=f"sections to run, comma-separated: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--samples", type=int, help="latency triggers (default 400, --quick 40)")
    parser.add_argument("--rate", type=float, default=20.0, help="latency triggers per second (default 20)")
    parser.add_argument(
        "--ingest", type=int, help="messages in the ingest burst (default 10000, --quick 2000)"
    )
    parser.add_argument("--subjects", help=f"a subset of {','.join(SUBJECTS)} (default: all three)")
    parser.add_argument(
        "--before",
        metavar="DIR",
        help="also measure the gateway of another checkout (e.g. a git worktree of an older commit), "
        "memory layer, in this run: subject 'before'; the redis subject is then left out",
    )
    parser.add_argument(
        "--history",
        metavar="KEEP",
        help='[history] keep of every gateway measured, e.g. "0" (no sensor history) or "7d" (the default)',
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    global HISTORY_KEEP
    HISTORY_KEEP = args.history
    opts = Options.from_args(args)
    results = asyncio.run(run(opts))
    print_report(results)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {path}")
    return 1 if results["errors"] or results["losses"] else 0


if __name__ == "__main__":
    sys.exit(main())
