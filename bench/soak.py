"""Soak run (issue 9, not in CI): steady load for minutes; did memory stay flat, was anything lost?

    python bench/soak.py [--minutes 10] [--rate 200] [--clients 100]

Private mosquitto, the gateway (in-memory layer, SQLite) as a process, `--clients`
WebSocket clients over 4 processes, `--rate` sensor readings a second with rules
evaluated on each, and the door toggled every 2 s so that alerts flow all along.
RSS is sampled every 15 s; growth is the last minute's median against the first
minute's after warm-up. Prints a summary and writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    TOKEN,
    Proc,
    Publisher,
    Services,
    door_payload,
    gateway_argv,
    metric_sum,
)
from bench.run import ingest_payloads, write_gateway_config  # noqa: E402
from bench.wsclients import ClientPool  # noqa: E402
from tests.conftest import free_port  # noqa: E402


async def soak(minutes: float, rate: float, clients: int, work: Path, pool: ClientPool) -> dict[str, object]:
    services = Services(work, redis=False)
    services.start()
    http = free_port()
    config = write_gateway_config(work, "soak", services, "memory", http)
    gateway = Proc("soak", gateway_argv(config, log_level="INFO"), work, http)
    publisher = Publisher(services.mqtt_port, "soak")
    try:
        await gateway.wait_ready()
        first_seq, _ = await pool.connect(f"ws://127.0.0.1:{http}/ws/alerts/?token={TOKEN}", clients)
        samples: list[tuple[float, float]] = []
        load = ingest_payloads(int(rate * 60 * minutes) + 1)
        started = time.monotonic()
        next_sample = started
        door_open, doors = False, 0
        for i, (topic, payload) in enumerate(load):
            due = started + i / rate
            if i % int(rate * 2) == 0:
                door_open, doors = not door_open, doors + 1
                publisher.publish("bench/door", door_payload(door_open))
            publisher.publish(topic, payload)
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - started, gateway.rss()))
                next_sample += 15
            if due > now:
                await asyncio.sleep(due - now)
        publisher.flush()
        handled = metric_sum(http, "gateway_mqtt_messages_total", {"outcome": "ok"})
        last_seq = int(metric_sum(http, "gateway_alerts_total"))
        events = await pool.wait(first_seq + 1, first_seq + last_seq)
        expected = set(range(first_seq + 1, first_seq + last_seq + 1))
        lost = sum(len(expected - {seq for seq, _ in conn}) for conn in events)
        errors = [line for line in gateway.log().splitlines() if line.startswith(("ERROR", "CRITICAL"))]
        warm = [rss for t, rss in samples if 60 <= t < 120] or [samples[0][1]]
        last = [rss for t, rss in samples if t >= samples[-1][0] - 60]
        growth = (statistics.median(last) - statistics.median(warm)) / statistics.median(warm) * 100
        return {
            "minutes": minutes,
            "rate": rate,
            "clients": clients,
            "messages_published": len(load) + doors,
            "messages_handled": handled,
            "alert_events": last_seq,
            "alert_events_lost": lost,
            "errors": len(errors),
            "error_lines": errors[:10],
            "rss_mib_after_warmup": round(statistics.median(warm), 1),
            "rss_mib_last_minute": round(statistics.median(last), 1),
            "rss_growth_percent": round(growth, 1),
            "rss_samples": [(round(t), round(r, 1)) for t, r in samples],
            "overflows": metric_sum(http, "gateway_channel_layer_overflows_total"),
        }
    finally:
        publisher.close()
        await pool.close()
        gateway.stop()
        services.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = parser.parse_args()
    pool = ClientPool(4)  # before any thread: the workers are spawned, not forked
    with tempfile.TemporaryDirectory(prefix="gateway-soak-") as tmp:
        result = asyncio.run(soak(args.minutes, args.rate, args.clients, Path(tmp), pool))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    for key, value in result.items():
        if key not in ("rss_samples", "error_lines"):
            print(f"{key:<24}{value}")
    ok = (
        result["alert_events_lost"] == 0
        and result["errors"] == 0
        and result["messages_handled"] == result["messages_published"]
    )
    return 0 if ok and float(str(result["rss_growth_percent"])) < 10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
