"""Telegram: trigger -> Telegram message latency, one alert to 60 chats, and what Telegram costs at start-up.

    python bench/telegram.py [--samples 12]

Starts a private mosquitto, the Bot API stand-in of the tests (real HTTP on
127.0.0.1, real aiogram in the gateway), and the gateway as a real process,
once without Telegram and once with it. Measures:

- start to ready: the "ready in" of the log (MQTT and web up) and start to
  /healthz 200 (with Telegram: until the Bot API answered, aiogram imported);
- idle RSS two seconds after /healthz is 200;
- trigger -> Telegram: MQTT publish to the stand-in receiving sendMessage, one
  chat, triggers 2.5 s apart (a chat takes one message a second);
- one alert to 60 subscribed chats: publish to the 60th sendMessage, and the
  stand-in's count of rate-limit violations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as paho

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, healthy, rss_mib, wait_port  # noqa: E402
from tests.telegram_standin import BotApiStandin  # noqa: E402

TOKEN = "123456:BENCH-token-for-the-gateway-bench_01"
CHATS = [5000 + i for i in range(60)]
CONFIG = """
[gateway]
site = "bench"
state_dir = "{state}"
[http]
bind = "127.0.0.1:{http}"
[mqtt]
url = "mqtt://127.0.0.1:{mqtt}"
client_id = "gateway-bench-{name}"
[[sensors]]
id = "door"
name = "Door"
topic = "bench/door"
format = "json"
field = "open"
[[rules]]
id = "open"
sensor = "door"
when = {{ equals = true }}
clear = {{ equals = false }}
message = "{{sensor.name}} open"
"""


class Gateway:
    def __init__(self, name: str, work: Path, mqtt_port: int, telegram: str) -> None:
        self.http = free_port()
        self.log = work / f"{name}.log"
        conf = work / f"{name}.toml"
        text = CONFIG.format(state=work / name, http=self.http, mqtt=mqtt_port, name=name) + telegram
        conf.write_text(text)
        self.started = time.monotonic()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(conf)],
                stdout=log,
                stderr=log,
                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            )

    async def healthy(self) -> float:
        while not await asyncio.to_thread(healthy, self.http):
            if self.proc.poll() is not None or time.monotonic() - self.started > 60:
                raise RuntimeError(f"gateway did not start:\n{self.log.read_text()}")
            await asyncio.sleep(0.02)
        return time.monotonic() - self.started

    def ready_in(self) -> float:
        match = re.search(r"ready in ([0-9.]+)s", self.log.read_text())
        return float(match.group(1)) if match else float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


async def footprint(name: str, work: Path, mqtt_port: int, telegram: str) -> dict[str, float]:
    gw = Gateway(name, work, mqtt_port, telegram)
    try:
        healthy_s = await gw.healthy()
        await asyncio.sleep(2)
        return {
            "ready_in_s": gw.ready_in(),
            "start_to_healthy_s": round(healthy_s, 2),
            "idle_rss_mib": round(rss_mib(gw.proc.pid), 1),
        }
    finally:
        gw.stop()


async def telegram_paths(work: Path, mqtt_port: int, api: BotApiStandin, samples: int) -> dict[str, float]:
    section = (
        f'\n[telegram]\ntoken = "{TOKEN}"\napi_url = "{api.base_url}"\nallowed_chats = {json.dumps(CHATS)}\n'
    )
    gw = Gateway("paths", work, mqtt_port, section)
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-telegram-pub")
    try:
        await gw.healthy()
        pub.connect("127.0.0.1", mqtt_port)
        pub.loop_start()
        first = CHATS[0]
        api.user_says(first, "/subscribe")
        await api.wait_sent(1, method="sendMessage", chat_id=first)
        await asyncio.sleep(1.1)
        latencies = []
        for i in range(samples):
            before = len([m for m in api.sent if m["method"] == "sendMessage"])
            sent = time.monotonic()
            pub.publish("bench/door", json.dumps({"open": True}), qos=1)
            got = await api.wait_sent(before + 1, method="sendMessage")
            latencies.append((got[-1]["at"] - sent) * 1000)
            pub.publish("bench/door", json.dumps({"open": False}), qos=1)
            await asyncio.sleep(2.5)  # the clear's edit, then a free slot for the chat
            print(f"  trigger {i + 1}/{samples}: {latencies[-1]:.1f} ms", flush=True)

        for chat in CHATS[1:]:
            api.user_says(chat, "/subscribe")
        await api.wait_sent(samples + len(CHATS), timeout=30, method="sendMessage")
        await asyncio.sleep(2.5)
        before = len([m for m in api.sent if m["method"] == "sendMessage"])
        violations_before = dict(api.violations)
        sent = time.monotonic()
        pub.publish("bench/door", json.dumps({"open": True}), qos=1)
        got = await api.wait_sent(before + len(CHATS), timeout=30, method="sendMessage")
        fan_out = max(m["at"] for m in got[before:]) - sent
        latencies.sort()
        return {
            "trigger_to_telegram_p50_ms": round(statistics.median(latencies), 1),
            "trigger_to_telegram_max_ms": round(latencies[-1], 1),
            "samples": len(latencies),
            "sixty_chats_s": round(fan_out, 2),
            "violations": sum(api.violations.values()) - sum(violations_before.values()),
        }
    finally:
        pub.loop_stop()
        pub.disconnect()
        gw.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "telegram.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-tg-"))
    mqtt_port = free_port()
    (work / "mosquitto.conf").write_text(
        f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
    )
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen(
        [mosquitto, "-c", str(work / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(mqtt_port)
        async with BotApiStandin(token=TOKEN) as api:
            section = f'\n[telegram]\ntoken = "{TOKEN}"\napi_url = "{api.base_url}"\n'
            off = await footprint("off", work, mqtt_port, "")
            on = await footprint("on", work, mqtt_port, section)
            paths = await telegram_paths(work, mqtt_port, api, args.samples)
    finally:
        broker.terminate()
        broker.wait(10)
    result = {"telegram_off": off, "telegram_on": on, **paths}
    print(f"{'':<14}{'ready in s':>11}{'healthy s':>11}{'idle RSS MiB':>14}")
    for label, row in (("telegram off", off), ("telegram on", on)):
        print(f"{label:<14}{row['ready_in_s']:>11}{row['start_to_healthy_s']:>11}{row['idle_rss_mib']:>14}")
    print(
        f"trigger -> Telegram: p50 {paths['trigger_to_telegram_p50_ms']} ms, "
        f"max {paths['trigger_to_telegram_max_ms']} ms ({paths['samples']} triggers)"
    )
    print(f"one alert to 60 chats: {paths['sixty_chats_s']} s, {paths['violations']} limit violations")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
