"""The MQTT client's own PUBLISH decoding agrees with paho's, byte stream by byte stream.

`AsyncioClient` frames and decodes a PUBLISH itself when it can (see protocols/mqtt/client.py)
and leaves the rest to paho. Here hypothesis makes streams of PUBLISH packets (MQTT 3.1.1 and
5, QoS 0 and 1, with and without properties, empty payloads, long remaining lengths), cuts them
at random places, and feeds each to the client and to a plain paho client over real socket
pairs: both must hand over the same messages, in the same order.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from protocols.mqtt.client import AsyncioClient

Message = tuple[bytes, bytes, int, bool, int]  # topic, payload, qos, retain, mid (0 for QoS 0)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


# What a topic name can carry: UTF-8 (never a surrogate, which has no encoding), no U+0000,
# and no wildcard, which only subscriptions use.
TOPIC_CHARACTERS = st.characters(codec="utf-8", exclude_characters="+#\x00")


@st.composite
def publishes(draw: Any, v5: bool) -> tuple[bytes, Message]:
    topic = draw(st.text(TOPIC_CHARACTERS, min_size=1, max_size=40))
    payload = draw(st.one_of(st.binary(max_size=64), st.binary(min_size=120, max_size=20_000)))
    qos = draw(st.sampled_from([0, 1]))
    retain = draw(st.booleans())
    mid = draw(st.integers(1, 65535)) if qos else 0
    body = mqtt_string(topic.encode())
    if qos:
        body += mid.to_bytes(2, "big")
    if v5:
        props = b""
        if draw(st.booleans()):  # a user property and a content type: paho decodes those
            props = b"\x26" + mqtt_string(b"k") + mqtt_string(draw(st.binary(max_size=10)).hex().encode())
            props += b"\x03" + mqtt_string(b"text/plain")
        body += varint(len(props)) + props
    body += payload
    header = 0x30 | (qos << 1) | int(retain)
    return bytes([header]) + varint(len(body)) + body, (topic.encode(), payload, qos, retain, mid)


def as_tuple(m: paho.MQTTMessage) -> Message:
    return (m.topic.encode(), m.payload, m.qos, bool(m.retain), m.mid)


def paho_reference(stream: bytes, v5: bool) -> list[Message]:
    """What paho alone makes of the stream (its own reader and decoder, on a socket pair)."""
    got: list[Message] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
    client.manual_ack_set(True)
    client.on_message = lambda c, u, m: got.append(as_tuple(m))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        client._sock = ours
        theirs.sendall(stream)
        while client._packet_read() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            pass
        client._sock = None
    return [(t, p, q, r, mid if q else 0) for t, p, q, r, mid in got]


async def through_asyncio_client(chunks: list[bytes], v5: bool, expected: int) -> list[Message]:
    loop = asyncio.get_running_loop()
    got: list[Message] = []
    done = loop.create_future()

    def take(message: Message) -> None:
        got.append(message)
        if len(got) == expected and not done.done():
            done.set_result(None)

    client = AsyncioClient(loop, protocol=paho.MQTTv5 if v5 else paho.MQTTv311, manual_ack=True)
    client.on_publish_received = lambda topic, payload, qos, retain, dup, mid: take(
        (topic, payload, qos, retain, mid if qos else 0)
    )
    client.on_message = lambda c, u, m: take(as_tuple(m))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        client._sock = ours
        loop.add_reader(ours, client._read)
        try:
            for chunk in chunks:
                theirs.sendall(chunk)
                await asyncio.sleep(0)  # the client may see any prefix of the stream
            await asyncio.wait_for(done, 10)
        finally:
            loop.remove_reader(ours)
            client._sock = None
    return got


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), v5=st.booleans())
def test_the_fast_path_decodes_what_paho_decodes(data: Any, v5: bool) -> None:
    packets = data.draw(st.lists(publishes(v5), min_size=1, max_size=30))
    stream = b"".join(packet for packet, _ in packets)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=12))))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True) if b > a]
    expected = [message for _, message in packets]
    assert paho_reference(stream, v5) == expected  # the packets are what paho itself reads
    assert asyncio.run(through_asyncio_client(chunks, v5, len(expected))) == expected


def test_topics_drawn_are_what_mqtt_can_carry() -> None:
    def unsendable(topic: str) -> bool:
        try:
            topic.encode()
        except UnicodeEncodeError:  # a surrogate
            return True
        return bool(set(topic) & set("+#\x00"))

    with pytest.raises(NoSuchExample):
        find(st.text(TOPIC_CHARACTERS, min_size=1), unsendable, settings=settings(max_examples=2000))
