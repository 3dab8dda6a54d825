"""paho-mqtt driven by the asyncio event loop: no thread, no poll interval.

paho does the protocol; the loop watches its socket (`add_reader`/`add_writer`)
and the TCP connect is awaited, so a broker that is down or slow never blocks
the loop. TCP_NODELAY is set on every connection: Nagle's algorithm would hold
small PUBLISH/PUBACK packets back by tens of milliseconds.

Ingest costs per message are kept off paho's slow paths. paho 2.x internals are used
(`_sock_recv`, `_handle_publish`, `_packet_write` overridden; `_packet_read`,
`_in_packet`, `_packet_queue`, `_last_bytes_received` used), and every fast path falls
back to paho's own code for what it does not handle:

- reads: paho reads a packet in three `recv` calls (type, length, body) and handles
  one packet per readable event (loop_read ignores max_packets); here one `recv`
  fills a buffer and every packet in it is handled in the same wake-up (`_read`,
  `_sock_recv`); a PUBLISH whole in the buffer is framed here (`_read_publish`);
- PUBLISH decode: paho builds an MQTT 5 `Properties` object for every message (about
  half of the ingest CPU); a QoS 0/1 PUBLISH without properties (what brokers forward
  unless the publisher set some) is decoded without one and handed to
  `on_publish_received` without an `MQTTMessage` (`_publish_fast`);
- writes: paho sends each queued packet with its own `send`; consecutive packets
  that need nothing after their write (PUBACKs, QoS 1 PUBLISHes, pings) leave in
  one `send` (`_packet_write`), and `ack_many` queues the PUBACKs of a batch at once.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

# Packets handled per readable event before other callbacks get a turn (the rest: call_soon).
READ_BATCH = 256
# One `recv` asks for this much; a PUBLISH of a sensor reading is ~100 bytes.
RECV_SIZE = 256 * 1024
# A packet whose write has side effects in paho (QoS 0 PUBLISH callbacks, DISCONNECT closing).
_PUBLISH, _PUBACK, _DISCONNECT = 0x30, 0x40, 0xE0
_PUBACK_FRAME = struct.Struct("!BBH")

__all__ = ["AsyncioClient", "BrokerAddress"]


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        tls = parts.scheme in ("mqtts", "ssl")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def __str__(self) -> str:  # never the password
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class AsyncioClient(paho.Client):
    """A paho client whose socket I/O is driven by an asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, **kwargs)
        self._aloop = loop
        self._ready_sock: socket.socket | None = None
        self._misc: asyncio.TimerHandle | None = None
        self._rbuf = b""  # received, not yet handed to paho
        self._rpos = 0
        self._read_again: asyncio.Handle | None = None
        # Instead of on_message for the PUBLISHes decoded here: (topic bytes, payload, qos, retain,
        # dup, mid), no MQTTMessage; exceptions propagate as from on_message.
        self.on_publish_received: Callable[[bytes, bytes, int, bool, bool, int], None] | None = None
        self.on_socket_open = self._io_open
        self.on_socket_close = self._io_close
        self.on_socket_register_write = self._io_want_write
        self.on_socket_unregister_write = self._io_done_write

    async def connect_async_io(
        self, address: BrokerAddress, keepalive: int, timeout: float, **kw: Any
    ) -> None:
        """Open the TCP connection without blocking, then let paho send CONNECT."""
        infos = await self._aloop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        last: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(self._aloop.sock_connect(sock, sockaddr), timeout)
            except (OSError, TimeoutError) as err:
                sock.close()
                last = err if isinstance(err, OSError) else OSError(f"timed out after {timeout:.0f}s")
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._ready_sock = sock
            break
        else:
            raise last or OSError(f"cannot resolve {address.host}")
        if address.username is not None:
            self.username_pw_set(address.username, address.password)
        if address.tls and self._ssl_context is None:
            self.tls_set_context(ssl.create_default_context())
        # connect() only stores its arguments and calls reconnect(), which takes
        # the socket from _create_socket_connection below: no blocking call left.
        self.connect(address.host, address.port, keepalive, **kw)

    def _create_socket_connection(self) -> socket.socket:
        sock, self._ready_sock = self._ready_sock, None
        if sock is None:
            raise OSError("no connected socket: use connect_async_io()")
        sock.setblocking(True)  # paho sets it non-blocking after the TLS wrap
        return sock

    # Socket callbacks: paho tells us which events to watch.

    def _io_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._rbuf, self._rpos = b"", 0
        self._aloop.add_reader(sock, self._read)
        self._schedule_misc()

    def _io_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._aloop.remove_reader(sock)
        self._aloop.remove_writer(sock)
        self._rbuf, self._rpos = b"", 0
        if self._read_again is not None:
            self._read_again.cancel()
            self._read_again = None
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    def _io_want_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._aloop.add_writer(sock, self.loop_write)

    def _io_done_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._aloop.remove_writer(sock)

    def _read(self) -> None:
        # Every complete packet received so far, in one wake-up (paho's loop_read handles one).
        self._read_again = None
        fast = False
        try:
            for _ in range(READ_BATCH):
                if self._sock is None:
                    return
                if self._read_publish():
                    fast = True
                    continue
                rc = self._packet_read()
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    return  # nothing left in our buffer, TLS's or the socket's
                if rc > 0:
                    self._loop_rc_handle(rc)
                    return
        finally:
            if fast:  # what paho's reader does per packet, for the keepalive
                with self._msgtime_mutex:
                    self._last_bytes_received = paho.time_func()
        # More may wait where the socket being readable does not tell (our buffer, TLS's):
        # come back after the other callbacks.
        self._read_again = self._aloop.call_soon(self._read)

    def _sock_recv(self, bufsize: int) -> bytes:
        # paho asks for 1 byte, 1 byte, then the rest of a packet: served from one big recv.
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            buf = super()._sock_recv(RECV_SIZE)  # BlockingIOError when there is nothing: paho's AGAIN
            if len(buf) <= bufsize:
                return buf  # b"" (closed) included
            pos = 0
        end = pos + bufsize
        self._rbuf, self._rpos = (buf, end) if end < len(buf) else (b"", 0)
        return buf[pos:end]

    def _handle_publish(self) -> MQTTErrorCode:
        # paho's own decode, without an MQTT 5 Properties object when the packet has none.
        packet = self._in_packet["packet"]
        header = self._in_packet["command"]
        if not self._publish_fast(header, packet, 0, len(packet)):
            return super()._handle_publish()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _read_publish(self) -> bool:
        """A whole PUBLISH at the head of our buffer, handled without paho's reader; False: paho's turn.

        Only between packets (paho holds no partial one), for a complete packet in the buffer.
        """
        buf, pos = self._rbuf, self._rpos
        size = len(buf)
        if pos >= size or buf[pos] & 0xF0 != _PUBLISH or self._in_packet["command"]:
            return False
        i, length, shift = pos + 1, 0, 0
        while True:  # the remaining length, 1 to 4 bytes
            if i >= size or shift > 21:
                return False  # incomplete, or malformed: paho reads it and reports it
            byte = buf[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        end = i + length
        if end > size or not self._publish_fast(buf[pos], buf, i, end):
            return False
        self._rbuf, self._rpos = (buf, end) if end < size else (b"", 0)
        return True

    def _publish_fast(self, header: int, data: bytes | bytearray, lo: int, hi: int) -> bool:
        """Decode and hand over the PUBLISH body data[lo:hi]; False (nothing done) if paho must."""
        qos = (header & 0x06) >> 1
        if qos == 2 or hi - lo < 2:
            return False
        end = lo + 2 + ((data[lo] << 8) | data[lo + 1])
        mid = 0
        start = end
        if qos:
            if hi < end + 2:
                return False
            mid = (data[end] << 8) | data[end + 1]
            start = end + 2
        if self._protocol == paho.MQTTv5:
            if hi <= start or data[start] != 0:
                return False  # properties: paho decodes them
            start += 1
        elif end == lo + 2 or hi < start:
            return False  # empty topic (3.1.1) or truncated: paho's errors
        topic, payload = bytes(data[lo + 2 : end]), bytes(data[start:hi])
        retain, dup = bool(header & 0x01), bool(header & 0x08)
        receiver = self.on_publish_received
        if receiver is not None:
            receiver(topic, payload, qos, retain, dup, mid)
        else:
            message = paho.MQTTMessage(mid, topic)
            message.dup, message.qos, message.retain, message.payload = dup, qos, retain, payload
            message.timestamp = paho.time_func()
            # message.properties stays None: an MQTT 5 message without properties.
            self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            self._send_puback(mid)
        return True

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK these QoS 1 messages (manual_ack): one queued write instead of one packet each."""
        if mids:
            self._packet_queue(_PUBACK, b"".join([_PUBACK_FRAME.pack(_PUBACK, 2, mid) for mid in mids]), 0, 0)

    def _packet_write(self) -> MQTTErrorCode:
        # Consecutive packets that need nothing after their write leave in one send.
        out = self._out_packet
        if len(out) > 1 and self._sock is not None:
            run = []
            for packet in out:
                command = packet["command"] & 0xF0
                if command == _DISCONNECT or (command == _PUBLISH and packet["qos"] == 0):
                    break
                run.append(packet)
            if len(run) > 1:
                data = b"".join(p["packet"][p["pos"] :] for p in run)
                try:
                    sent = self._sock_send(data)
                except BlockingIOError:
                    return MQTTErrorCode.MQTT_ERR_AGAIN
                except (AttributeError, ValueError):
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
                except OSError:
                    return super()._packet_write()  # paho logs it and reports the lost connection
                for packet in run:
                    taken = min(sent, packet["to_process"])
                    packet["pos"] += taken
                    packet["to_process"] -= taken
                    sent -= taken
                    if packet["to_process"]:
                        break
                    out.popleft()
                if out and out[0]["to_process"] and out[0]["pos"]:
                    return MQTTErrorCode.MQTT_ERR_AGAIN  # the socket took part of it: wait for room
        return super()._packet_write()

    def _schedule_misc(self) -> None:
        self._misc = self._aloop.call_later(1.0, self._run_misc)

    def _run_misc(self) -> None:
        # Keepalive pings and the detection of a silent broker.
        if self.loop_misc() == paho.MQTT_ERR_SUCCESS:
            self._schedule_misc()
