"""What sensor history costs the ingest path: CPU per reading, history on against history off, paired.

    python bench/history_cost.py [--bursts 8] [--messages 10000] [--layer memory|redis]

Three gateways (memory layer, or each on a Redis database of its own) subscribed to one private
mosquitto, with bench/run.py's ingest config: one with `[history] keep = "7d"` (the default), two
with `keep = "0"` (the second one a control: how far two alike differ). Each burst of bench/run.py's
ingest readings reaches all at once, so all meet the same background load; each one's CPU time
(user + system, from /proc) over the burst, divided by the readings it handled, is its cost per
reading. CPU time, unlike wall-clock throughput, hardly moves with the other work of
a busy machine. Prints each burst and the medians, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench.run as bench  # noqa: E402
from bench.common import Proc, Publisher, Services, free_port, gateway_argv, metric_sum  # noqa: E402


def cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def measure(bursts: int, n: int, layer: str) -> dict[str, list[float]]:
    work = Path(tempfile.mkdtemp(prefix="history-cost-"))
    services = Services(work, redis=layer == "redis")
    services.start()
    procs: dict[str, Proc] = {}
    try:
        # "off2": a second gateway without history, the control: its difference from "off" is noise.
        # "on" subscribes between them: the first subscriber gets each message first (smaller batches,
        # more CPU per message), which alone made the first one 5 % dearer here.
        for name, keep in (("off", "0"), ("on", "7d"), ("off2", "0")):
            bench.HISTORY_KEEP = keep
            http = free_port()
            url = services.redis_url.replace("/0", f"/{len(procs)}") if layer == "redis" else "memory"
            config = bench.write_gateway_config(work, name, services, url, http)
            procs[name] = Proc(name, gateway_argv(config, (), "WARNING"), work, http_port=http)
        for proc in procs.values():
            await proc.wait_ready()
        pub = Publisher(services.mqtt_port, "history-cost")
        payloads = bench.ingest_payloads(n)
        out: dict[str, list[float]] = {name: [] for name in procs}
        for k in range(bursts):
            base = {
                name: metric_sum(p.http_port or 0, bench.OK, {"outcome": "ok"}) for name, p in procs.items()
            }
            before = {name: cpu(p.pid) for name, p in procs.items()}
            for topic, payload in payloads:
                pub.client.publish(topic, payload, qos=1)
            pub.flush()
            after: dict[str, float] = {}
            deadline = time.monotonic() + 60
            while len(after) < len(procs) and time.monotonic() < deadline:
                for name, p in procs.items():
                    if name not in after:
                        handled = metric_sum(p.http_port or 0, bench.OK, {"outcome": "ok"}) - base[name]
                        if handled >= n:
                            after[name] = cpu(p.pid)
                await asyncio.sleep(0.02)
            line = []
            for name in procs:
                us = (after[name] - before[name]) / n * 1e6
                out[name].append(us)
                line.append(f"{name} {us:.2f} us")
            print(f"burst {k + 1}: " + ", ".join(line), flush=True)
            await asyncio.sleep(0.5)
        return out
    finally:
        for proc in procs.values():
            proc.stop()
        services.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=8)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--layer", choices=["memory", "redis"], default="memory")
    args = parser.parse_args(argv)
    out = asyncio.run(measure(args.bursts, args.messages, args.layer))
    on, off, off2 = (statistics.median(out[name]) for name in ("on", "off", "off2"))
    print(f"CPU per reading, median of {args.bursts} bursts: history on {on:.2f} us, off {off:.2f} us")
    print(f"control, a second gateway without history: {off2:.2f} us ({off2 / off:.3f} of off)")
    without = (off + off2) / 2
    share = without / on * 100
    print(f"on / without: {on / without:.3f} (with history, {share:.1f} % of the readings per CPU second)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
