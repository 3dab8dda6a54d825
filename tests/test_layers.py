"""A full channel is counted and logged, never dropped in silence."""

from __future__ import annotations

import logging

import pytest

from gateway import metrics
from gateway.layers import MemoryLayer


async def test_memory_layer_counts_and_logs_overflow(caplog: pytest.LogCaptureFixture) -> None:
    layer = MemoryLayer(capacity=2)
    channel = await layer.new_channel()
    await layer.group_add("alerts", channel)
    before = metrics.layer_overflows._value.get()
    with caplog.at_level(logging.WARNING, logger="gateway.layer"):
        for i in range(5):
            await layer.group_send("alerts", {"type": "alert.raised", "n": i})
    assert metrics.layer_overflows._value.get() - before == 3
    assert "channel layer full: dropped 1 message(s) for alerts" in caplog.text
    # What fitted is delivered, in order.
    assert [(await layer.receive(channel))["n"] for _ in range(2)] == [0, 1]
