"""paho-mqtt's private names, in one place: the MQTT client's fast paths (checked on paho-mqtt 2.2.0).

`FastPahoClient` is a paho client that keeps ingest off paho's slow paths:

- reads: paho reads a packet in three `recv` calls (type, length, body) and handles
  one packet per readable event (loop_read ignores max_packets); here one `recv`
  fills a buffer and every packet in it is handled in the same wake-up (`read_packets`,
  `_sock_recv`); a PUBLISH whole in the buffer is framed here (`_read_publish`);
- PUBLISH decode: paho builds an MQTT 5 `Properties` object for every message (about
  half of the ingest CPU); a QoS 0/1 PUBLISH without properties (what brokers forward
  unless the publisher set some) is decoded without one and handed to
  `on_publish_received` without an `MQTTMessage` (`_publish_fast`);
- writes: paho sends each queued packet with its own `send`; consecutive packets
  that need nothing after their write (PUBACKs, QoS 1 PUBLISHes, pings) leave in
  one `send` (`_packet_write`), and `ack_many` queues the PUBACKs of a batch at once;
- connect: a socket connected without blocking the loop is handed to paho (`connect_on`);
- in flight: the broker's MQTT 5 Receive Maximum, read in `on_connect`, bounds our QoS 1
  PUBLISHes awaiting PUBACK (`limit_in_flight`: paho's setter refuses a connected client).

Every fast path falls back to paho's own code for what it does not handle. They rely on the
paho internals in `INTERNALS`; `FAST` says at import whether this paho has them all. Without
them every method here takes paho's public path instead (`loop_read`, `on_message`, `ack`, a
blocking connect): slower, same messages; start-up logs it once. tests/test_internals.py
fails by name when an upgrade removes one.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.ops import logs

CHECKED = {"paho-mqtt": "2.2.0"}
# Overridden: paho calls them.
OVERRIDDEN = ("_create_socket_connection", "_sock_recv", "_handle_publish", "_packet_write")
# Called or read, of a client.
INTERNALS = (
    *OVERRIDDEN,
    "_packet_read",
    "_loop_rc_handle",
    "_send_puback",
    "_handle_on_message",
    "_packet_queue",
    "_sock_send",
    "_sock",
    "_in_packet",
    "_out_packet",
    "_protocol",
    "_manual_ack",
    "_msgtime_mutex",
    "_last_bytes_received",
    "_max_inflight_messages",
)
# Of paho.mqtt.client: its clock.
MODULE_INTERNALS = ("time_func",)

# Packets handled per readable event before other callbacks get a turn.
READ_BATCH = 1024
# Seconds of packets (and the handlers that run in their call) before other callbacks get a turn.
READ_SLICE = 0.02
# One `recv` asks for this much; a PUBLISH of a sensor reading is ~100 bytes.
RECV_SIZE = 256 * 1024
# A packet whose write has side effects in paho (QoS 0 PUBLISH callbacks, DISCONNECT closing).
_PUBLISH, _PUBACK, _DISCONNECT = 0x30, 0x40, 0xE0
_PUBACK_FRAME = struct.Struct("!BBH")


def check() -> bool:
    """Whether this paho has every name the fast paths use; logs what is missing when not."""
    probe = paho.Client(CallbackAPIVersion.VERSION2)  # instance attributes are set by the constructor
    missing = [name for name in INTERNALS if not hasattr(probe, name)]
    missing += [name for name in MODULE_INTERNALS if not hasattr(paho, name)]
    if missing:
        from importlib.metadata import version  # here: half a MiB the gateway does not import

        logs.mqtt.warning(
            "paho-mqtt %s lacks %s (checked on %s): MQTT takes paho's slower public path",
            version("paho-mqtt"),
            ", ".join(missing),
            CHECKED["paho-mqtt"],
        )
    return not missing


FAST = check()


class FastPahoClient(paho.Client):
    """A paho client with the fast paths above (`FAST`), or paho's own code (not `FAST`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ready_sock: socket.socket | None = None
        self._rbuf = b""  # received, not yet handed to paho
        self._rpos = 0
        # Instead of on_message for the PUBLISHes decoded here: (topic bytes, payload, qos, retain,
        # dup, mid), no MQTTMessage; exceptions propagate as from on_message.
        self.on_publish_received: Callable[[bytes, bytes, int, bool, bool, int], None] | None = None

    def connect_on(
        self, sock: socket.socket, host: str, port: int, keepalive: int, timeout: float, **kw: Any
    ) -> None:
        """Connect over `sock`, a TCP connection to host:port made without blocking; paho sends CONNECT."""
        if FAST:
            # connect() only stores its arguments and calls reconnect(), which takes the
            # socket from _create_socket_connection below: no blocking call left.
            self._ready_sock = sock
        else:
            # paho's own connect: blocking, for at most `timeout`, to a broker that just accepted one.
            sock.close()
            self.connect_timeout = timeout
        self.connect(host, port, keepalive, **kw)

    def _create_socket_connection(self) -> socket.socket:
        sock, self._ready_sock = self._ready_sock, None
        if sock is None:
            if FAST:
                raise OSError("no connected socket: use connect_on()")
            return super()._create_socket_connection()
        sock.setblocking(True)  # paho sets it non-blocking after the TLS wrap
        return sock

    def forget_received(self) -> None:
        """A socket opened or closed: nothing it sent is buffered here any more."""
        self._rbuf, self._rpos = b"", 0

    def read_packets(self) -> bool:
        """Handle every complete packet received so far (paho's loop_read handles one per call).

        True: more may wait where the socket being readable does not tell (our buffer, TLS's).
        """
        if not FAST:
            rc = self.loop_read()
            sock = self.socket()
            return (
                rc == MQTTErrorCode.MQTT_ERR_SUCCESS
                and isinstance(sock, ssl.SSLSocket)
                and sock.pending() > 0
            )
        fast = False
        deadline = time.monotonic() + READ_SLICE
        try:
            for _ in range(READ_BATCH):
                if self._sock is None:
                    return False
                if self._rpos >= len(self._rbuf):
                    if not self._in_packet["command"]:
                        # Between packets: read here, so that a PUBLISH takes the fast path.
                        try:
                            data = super()._sock_recv(RECV_SIZE)
                        except BlockingIOError:
                            return False
                        except OSError:
                            data = b""  # paho's read below meets the error again and reports it
                        self._rbuf, self._rpos = data, 0
                if self._read_publish():
                    fast = True
                elif (rc := self._packet_read()) == MQTTErrorCode.MQTT_ERR_AGAIN:
                    return False  # nothing left in our buffer, TLS's or the socket's
                elif rc > 0:
                    self._loop_rc_handle(rc)
                    return False
                if time.monotonic() > deadline:
                    return True  # the loop's other callbacks get a turn
        finally:
            if fast:  # what paho's reader does per packet, for the keepalive
                with self._msgtime_mutex:
                    self._last_bytes_received = paho.time_func()
        return True

    def _sock_recv(self, bufsize: int) -> bytes:
        # paho asks for 1 byte, 1 byte, then the rest of a packet: served from one big recv.
        if not FAST:
            return super()._sock_recv(bufsize)
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
        if not FAST:
            return super()._handle_publish()
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
        if not FAST:
            for mid in mids:
                self.ack(mid, 1)
        elif mids:
            self._packet_queue(_PUBACK, b"".join([_PUBACK_FRAME.pack(_PUBACK, 2, mid) for mid in mids]), 0, 0)

    def limit_in_flight(self, limit: int) -> bool:
        """At most `limit` of our QoS 1/2 PUBLISHes unacknowledged, from now on; False when this
        paho lacks the name (the limit set before connecting stays). Called from `on_connect`,
        before paho sends what waited for the connection."""
        if not FAST:
            return False
        self._max_inflight_messages = limit
        return True

    def _packet_write(self) -> MQTTErrorCode:
        # Consecutive packets that need nothing after their write leave in one send.
        if not FAST:
            return super()._packet_write()
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
