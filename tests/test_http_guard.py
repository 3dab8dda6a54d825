"""What a stranger's connection may cost: bodies, heads, half-open connections, asset names."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
import time

import django
from django.conf import settings

from tests.conftest import (
    GatewayFactory,
    GatewayProcess,
    http_get,
    metric,
    recv_json,
    until,
    with_http,
    ws_connect,
)

if not settings.configured:
    settings.configure(CHANNEL_LAYERS={}, INSTALLED_APPS=["gateway.store.apps.GatewayConfig"])
django.setup()

from gateway.web import pages  # noqa: E402 - needs the apps loaded


def connect(gw: GatewayProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.http_port), timeout=10)


def answer(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status_file:
        for line in status_file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def head(path: str, length: int, token: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_bodies_are_refused_on_their_head_alone(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    # Only the head is sent: each answer comes without the gateway waiting for a byte of the body.
    with connect(gw) as sock:
        sock.sendall(head("/api/alerts/x/ack", 200 * 1024 * 1024, "ops-secret-token"))
        response = answer(sock)
    assert status(response) == 413 and b"the body is over 65536 bytes" in response
    with connect(gw) as sock:
        sock.sendall(head("/api/alerts/x/ack", 1000))  # no token: 401, and the body stays unread
        response = answer(sock)
    assert status(response) == 401 and b'WWW-Authenticate: Bearer realm="gateway"' in response
    assert metric(gw, 'gateway_bad_input_total{protocol="http",reason="body_too_large"}') == 1
    # Within the limit, with a token, the request goes on as before.
    with connect(gw) as sock:
        sock.sendall(head("/api/alerts/zzz/ack", 2, "ops-secret-token") + b"{}")
        assert status(sock.recv(65536)) == 404


def test_wrong_tokens_refused_on_the_head_share_the_brake(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    # Refused before the body is read, yet counted like any other try: the fourth wrong one waits.
    answers = []
    for _ in range(5):
        with connect(gw) as sock:
            sock.sendall(head("/api/alerts/x/ack", 1000, "wrong-token"))
            answers.append(answer(sock))
    assert [status(a) for a in answers] == [401, 401, 401, 429, 429]
    assert b"Retry-After: " in answers[3]
    # So is the right token from that address, until the wait is over.
    with connect(gw) as sock:
        sock.sendall(head("/api/alerts/zzz/ack", 2, "ops-secret-token") + b"{}")
        assert status(answer(sock)) == 429
    assert metric(gw, 'gateway_bad_input_total{protocol="http",reason="token"}') == 3
    assert metric(gw, 'gateway_bad_input_total{protocol="http",reason="token_throttled"}') == 3


def test_a_stranger_200_mib_post_costs_no_memory(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    assert gw.proc is not None
    before = rss_mib(gw.proc.pid)
    chunk = b"x" * (1024 * 1024)
    with connect(gw) as sock:
        sock.sendall(head("/api/alerts/x/ack", 200 * len(chunk)))
        with contextlib.suppress(OSError):  # the gateway stops reading: a reset, or a timeout
            for _ in range(200):
                sock.sendall(chunk)
            response = answer(sock)
            assert status(response) == 401, response[:60]
    grown = rss_mib(gw.proc.pid) - before
    assert grown < 20, f"RSS grew by {grown:.0f} MiB"
    assert http_get(gw.url + "/healthz")[0] == 200


def test_an_overlong_head_is_answered_414_or_431(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    with connect(gw) as sock:
        sock.sendall(b"GET /?q=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status(answer(sock)) == 414
    with connect(gw) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + b"a" * 17_000 + b"\r\n\r\n")
        assert status(answer(sock)) == 431
    with connect(gw) as sock:
        lines = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"b" * 1000) for i in range(40))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + lines + b"\r\n")
        assert status(answer(sock)) == 431
    assert metric(gw, 'gateway_bad_input_total{protocol="http",reason="headers_too_large"}') == 2
    assert http_get(gw.url + "/healthz")[0] == 200


def test_a_request_whose_head_never_ends_is_timed_out(gateway_factory: GatewayFactory) -> None:
    gw = with_http(gateway_factory, "request_timeout = 1")
    with connect(gw) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        started = time.monotonic()
        response = answer(sock)
        waited = time.monotonic() - started
    assert status(response) == 408 and waited < 5, (response[:60], waited)
    # A connection that says nothing at all is closed as quietly.
    with connect(gw) as sock:
        assert answer(sock) == b""


def accept_queue(port: int) -> int:
    """Connections the kernel completed for 127.0.0.1:`port` that the gateway did not accept yet."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # LISTEN
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


async def test_half_open_connections_cannot_lock_out_a_dashboard(gateway_factory: GatewayFactory) -> None:
    gw = with_http(gateway_factory, "max_half_open = 50")
    assert gw.proc is not None
    pid = gw.proc.pid
    # The gateway may hold 300 files; 400 strangers connect and send nothing.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (300, 300))

    def taken_in() -> bool:  # the gateway accepted all it could (the listen backlog is only 50)
        return accept_queue(gw.http_port) == 0 or len(os.listdir(f"/proc/{pid}/fd")) >= 290

    idle: list[socket.socket] = []
    try:
        for _ in range(10):
            for _ in range(40):
                sock = socket.socket()
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", gw.http_port))
                idle.append(sock)
            await until(taken_in, what="the gateway to take the connections in")
        ws = await ws_connect(gw)
        assert (await recv_json(ws))["type"] == "hello"
        await ws.close()
        assert (await asyncio.to_thread(http_get, gw.url + "/healthz"))[0] == 200
        assert metric(gw, 'gateway_bad_input_total{protocol="http",reason="half_open"}') >= 350
    finally:
        for sock in idle:
            sock.close()


def test_asset_names_are_looked_up_not_cached_or_opened() -> None:
    for i in range(1000):
        assert pages.find_asset(f"missing-{i}.js") is None
    assert pages.find_asset("x" * 300 + ".js") is None  # was a 500: the file system's ENAMETOOLONG
    shipped = {p.name for p in pages.STATIC.iterdir() if p.suffix in pages.ASSET_TYPES}
    assert set(pages.assets()) == shipped and pages.find_asset("app.js") is not None
    # The old bug was a cache over the names asked for: every missing one was kept.
    assert not hasattr(pages.find_asset, "cache_info")


def test_an_asset_name_over_255_characters_is_a_404(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    code, body = http_get(f"{gw.url}/static/{'x' * 300}.js")
    assert code == 404 and len(str(body)) < 100


def test_a_chunked_body_is_cut_off_at_the_limit(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    with connect(gw) as sock:
        sock.sendall(
            b"POST /api/alerts/x/ack HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer ops-secret-token\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (8192, b"x" * 8192)
        with contextlib.suppress(OSError):  # refused part-way: the rest may meet a closed socket
            for _ in range(20):
                sock.sendall(chunk)
        response = answer(sock)
    assert status(response) == 413


def limits_after_start(limits: tuple[int, int]) -> subprocess.CompletedProcess[str]:
    """gateway.ops.process.descriptors(5000) in a process whose open-file limits are these."""
    code = (
        "import logging, resource; logging.basicConfig();"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, {limits});"
        "from gateway.ops.process import descriptors; descriptors(5000);"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)


def test_the_open_file_limit_is_raised_to_fit_the_caps_or_the_shortfall_is_said() -> None:
    raised = limits_after_start((1024, 8192))
    assert raised.stdout.strip() == "5000" and raised.stderr == ""
    short = limits_after_start((1024, 2048))
    assert short.stdout.strip() == "2048"
    assert (
        "open files are limited to 2048, but http.max_websockets and http.max_half_open need" in short.stderr
    )
