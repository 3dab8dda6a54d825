"""What the benchmarks share: private mosquitto and redis-server, processes timed to READY=1, a publisher.

Everything listens on 127.0.0.1 on free ports and lives in one temporary directory; every process
started here is stopped by whoever started it (`Services`, `Proc.stop`) in a `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, wait_port  # noqa: E402 - the tests' port helpers

__all__ = [
    "ROOT",
    "Proc",
    "Publisher",
    "Services",
    "free_port",
    "healthy",
    "http_status",
    "metric_sum",
    "percentile",
    "rss_mib",
    "wait_port",
]

TOKEN = "bench-token"


def rss_mib(pid: int) -> float:
    """VmRSS of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def http_status(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def healthy(port: int) -> bool:
    return http_status(f"http://127.0.0.1:{port}/healthz") == 200


def metric_sum(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of the samples `name` (e.g. gateway_mqtt_messages_total) with these labels, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        raise SystemExit(f"{name} is not installed (./scripts/test installs it)")
    return path


class Services:
    """Private mosquitto (TCP_NODELAY, queues big enough for an ingest burst) and redis-server, free ports."""

    def __init__(self, work: Path, redis: bool = True) -> None:
        self.work = work
        self.mqtt_port = free_port()
        self.redis_port = free_port() if redis else 0
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start(self) -> None:
        conf = self.work / "mosquitto.conf"
        conf.write_text(
            f"listener {self.mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            # Ingest is measured with a burst: the broker must queue it, not drop it.
            "max_queued_messages 1000000\nset_tcp_nodelay true\n"
        )
        with open(self.work / "mosquitto.log", "wb") as log:
            self.procs.append(
                subprocess.Popen([_binary("mosquitto"), "-c", str(conf)], stdout=log, stderr=log)
            )
        if self.redis_port:
            argv = [_binary("redis-server"), "--port", str(self.redis_port), "--bind", "127.0.0.1"]
            argv += ["--save", "", "--appendonly", "no", "--dir", str(self.work)]
            with open(self.work / "redis.log", "wb") as log:
                self.procs.append(subprocess.Popen(argv, stdout=log, stderr=log))
        wait_port(self.mqtt_port)
        if self.redis_port:
            wait_port(self.redis_port)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()


class Proc:
    """A process timed from spawn to its sd_notify READY=1 (and /healthz 200 when it serves HTTP)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        work: Path,
        http_port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.work, self.http_port = name, work, http_port
        self.log_path = work / f"{name}.log"
        self.notify_path = work / f"notify-{name}.sock"
        with contextlib.suppress(FileNotFoundError):
            self.notify_path.unlink()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.setblocking(False)
        full_env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "NOTIFY_SOCKET": str(self.notify_path),
            **(env or {}),
        }
        self.started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=work, env=full_env)
        self.ready_s: float | None = None
        self.healthz_s: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> float:
        return rss_mib(self.proc.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready_in(self) -> float | None:
        """The gateway's own "ready in N s" log line (its clock starts after the imports)."""
        match = re.search(r"ready in ([0-9.]+)s", self.log())
        return float(match.group(1)) if match else None

    def _drain(self) -> bool:
        ready = False
        while True:
            try:
                data = self.notify.recv(4096)
            except BlockingIOError:
                return ready
            ready = ready or b"READY=1" in data.split(b"\n")

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until READY=1 arrived and, with an HTTP port, /healthz answered 200; both times are kept."""
        while self.ready_s is None or (self.http_port is not None and self.healthz_s is None):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() - self.started > timeout:
                raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log()[-3000:]}")
            if self.ready_s is None and self._drain():
                self.ready_s = time.monotonic() - self.started
            if self.http_port is not None and self.healthz_s is None:
                status = await asyncio.to_thread(
                    http_status, f"http://127.0.0.1:{self.http_port}/healthz", 0.5
                )
                if status == 200:
                    self.healthz_s = time.monotonic() - self.started
            await asyncio.sleep(0.005)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.notify.close()
        with contextlib.suppress(FileNotFoundError):
            self.notify_path.unlink()


def gateway_argv(config: Path, protocols: Sequence[str] = (), log_level: str = "INFO") -> list[str]:
    argv = [sys.executable, "-m", "gateway", "run", "--config", str(config), "--log-level", log_level]
    for protocol in protocols:
        argv += ["--protocol", protocol]
    return argv


def _nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Publisher:
    """A paho client with TCP_NODELAY (the load generator must not add Nagle's delay), on its own thread.

    No in-flight limit by default: with one, paho walks its whole window of unacknowledged
    messages on every PUBACK to find the next queued one (`Client._update_inflight`); with
    1,000 that took ~100 us of CPU per message of an ingest burst, a core of this 2-core box
    taken from the subject under test while it ran. mosquitto acknowledges QoS 1 at once.
    """

    def __init__(self, port: int, name: str, inflight: int = 0) -> None:
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{name}-{os.getpid()}"
        )
        self.client.on_socket_open = _nodelay
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self.connected = False
        self.client.on_connect = self._on_connect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.connected:
            if time.monotonic() > deadline:
                raise RuntimeError("the bench publisher could not connect to mosquitto")
            time.sleep(0.005)
        self.last: paho.MQTTMessageInfo | None = None

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected = True

    def publish(self, topic: str, payload: str | bytes, qos: int = 1) -> float:
        """Publish; returns the wall-clock time just before the call (the latency's start)."""
        sent = time.time()
        self.last = self.client.publish(topic, payload, qos=qos)
        return sent

    def flush(self, timeout: float = 60.0) -> None:
        """Until the broker acknowledged the last publish (QoS 1)."""
        if self.last is not None:
            self.last.wait_for_publish(timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def door_payload(open_: bool) -> str:
    return json.dumps({"open": open_})
