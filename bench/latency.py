"""MQTT trigger -> WebSocket alert latency, idle RSS and start-to-healthy time, on real mosquitto and redis.

    python bench/latency.py [--samples 200] [--rate 20]

Starts a private mosquitto (and redis-server for the Redis layer) on free ports,
the gateway as a real process, and one WebSocket client. Each trigger toggles a
door sensor, so every message raises or clears an alert (a database write and a
broadcast each): the path users wait on. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, wait_port  # noqa: E402 - shared port helpers

CONFIG = """
[gateway]
site = "bench"
state_dir = "{state}"
channel_layer = "{layer}"
[http]
bind = "127.0.0.1:{http}"
[mqtt]
url = "mqtt://127.0.0.1:{mqtt}"
client_id = "gateway-bench-{name}"
[[sensors]]
id = "door"
topic = "bench/door"
format = "json"
field = "open"
[[rules]]
id = "open"
sensor = "door"
when = {{ equals = true }}
clear = {{ equals = false }}
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


async def measure(name: str, layer: str, mqtt_port: int, work: Path, samples: int, rate: float) -> dict:
    http = free_port()
    conf = work / f"{name}.toml"
    conf.write_text(CONFIG.format(state=work / name, layer=layer, http=http, mqtt=mqtt_port, name=name))
    t0 = time.monotonic()
    with open(work / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(conf), "--log-level", "WARNING"],
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        while not healthy(http):
            if proc.poll() is not None or time.monotonic() - t0 > 30:
                raise RuntimeError(f"gateway did not start: {(work / f'{name}.log').read_text()}")
            await asyncio.sleep(0.01)
        start_s = time.monotonic() - t0
        await asyncio.sleep(2)
        idle_rss = rss_mib(proc.pid)

        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{name}")
        # The load generator must not add Nagle's delay of its own.
        pub.on_socket_open = lambda c, u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pub.connect("127.0.0.1", mqtt_port)
        pub.loop_start()
        latencies: list[float] = []
        async with connect(f"ws://127.0.0.1:{http}/ws/alerts/") as ws:
            await ws.recv()  # hello
            for i in range(samples):
                sent = time.perf_counter()
                pub.publish("bench/door", json.dumps({"open": i % 2 == 0}), qos=1)
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if msg["type"] == "alert":
                        break
                latencies.append((time.perf_counter() - sent) * 1000)
                await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - sent)))
        pub.loop_stop()
        pub.disconnect()
        latencies.sort()
        return {
            "layer": name,
            "samples": len(latencies),
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
            "idle_rss_mib": round(idle_rss, 1),
            "start_to_healthy_s": round(start_s, 2),
        }
    finally:
        proc.terminate()
        proc.wait(15)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latency.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    mqtt_port, redis_port = free_port(), free_port()
    (work / "mosquitto.conf").write_text(
        f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
    )
    services = [
        subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(work / "mosquitto.conf")]
        ),
        subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_port(mqtt_port)
        wait_port(redis_port)
        results = [
            await measure("memory", "memory", mqtt_port, work, args.samples, args.rate),
            await measure(
                "redis", f"redis://127.0.0.1:{redis_port}/0", mqtt_port, work, args.samples, args.rate
            ),
        ]
    finally:
        for service in services:
            service.terminate()
            service.wait(10)
    print(f"{'layer':<8}{'samples':>8}{'p50 ms':>9}{'p99 ms':>9}{'idle RSS MiB':>14}{'start s':>9}")
    for r in results:
        print(
            f"{r['layer']:<8}{r['samples']:>8}{r['p50_ms']:>9}{r['p99_ms']:>9}"
            f"{r['idle_rss_mib']:>14}{r['start_to_healthy_s']:>9}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
