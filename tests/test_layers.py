"""A full channel is counted and logged, never dropped in silence."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from channels_redis.core import RedisChannelLayer

from gateway.config import load_config
from gateway.layers.memory import MemoryLayer
from gateway.layers.redis import RedisLayer
from gateway.ops import metrics
from gateway.settings import channel_layers
from tests.conftest import Service


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


async def test_redis_layer_renews_memberships_before_they_expire(redis_server: Service) -> None:
    # channels_redis forgets a member group_expiry after it joined; a chat or the MQTT publisher lives longer.
    layer = RedisLayer(hosts=[f"redis://127.0.0.1:{redis_server.port}/0"], group_expiry=2)
    plain = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{redis_server.port}/0"], group_expiry=2)
    kept, forgotten = await layer.new_channel(), await plain.new_channel()
    await layer.group_add("alerts", kept)
    await plain.group_add("alerts", forgotten)
    await asyncio.sleep(3)  # past the expiry: the point of the test is the clock
    await layer.group_send("alerts", {"type": "alert.raised", "n": 1})
    assert (await asyncio.wait_for(layer.receive(kept), 2))["n"] == 1
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(plain.receive(forgotten), 0.5)
    await layer.group_discard("alerts", kept)
    await layer.flush()
    await plain.close_pools()
    await layer.close_pools()


async def test_a_message_two_processes_may_both_receive_is_claimed_once(redis_server: Service) -> None:
    # Two processes' layers on one channel, as the MQTT processes share gateway.mqtt-alerts.
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    a, b = RedisLayer(hosts=[url], prefix="claimtest:"), RedisLayer(hosts=[url], prefix="claimtest:")
    assert await a.claim("mqtt-out:7") is True
    assert await b.claim("mqtt-out:7") is False
    assert await a.claim("mqtt-out:7") is False
    assert await b.claim("mqtt-out:8") is True
    await a.flush()
    await a.close_pools()
    await b.close_pools()


def test_memory_layer_keeps_members_past_a_day() -> None:
    from gateway.settings import GROUP_EXPIRY_NEVER, channel_layers

    assert channel_layers(load_config(None))["default"]["CONFIG"]["group_expiry"] == GROUP_EXPIRY_NEVER


async def test_a_process_s_consumers_share_its_redis_capacity_and_a_storm_fits(
    redis_server: Service, tmp_path: Path
) -> None:
    """channels_redis checks the capacity on one key per process (every consumer channel of the
    process is in it): the gateway's Redis layer holds a storm's messages for three consumers
    (the dashboards' hub, two sensors) that read nothing meanwhile."""
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(f'[gateway]\nchannel_layer = "redis://127.0.0.1:{redis_server.port}/0"\n')
    settings = channel_layers(load_config(config_file))["default"]
    assert settings["BACKEND"] == "gateway.layers.redis.RedisLayer"
    layer = RedisLayer(**settings["CONFIG"])
    hub, door, window = [await layer.new_channel() for _ in range(3)]
    await layer.group_add("alerts", hub)
    await layer.group_add("sensor.door", door)
    await layer.group_add("sensor.window", window)
    before = metrics.layer_overflows._value.get()

    async def changes(groups: list[str], numbers: range) -> None:  # in order, group by group
        for n, group in zip(numbers, groups, strict=True):
            await layer.group_send(group, {"type": "alert.raised", "n": n})

    # 1,100 changes, each to `alerts` and to its sensor's group: 2,200 messages, sent side by side.
    await asyncio.gather(
        changes(["alerts"] * 1100, range(1100)),
        changes(["sensor.door" if n % 2 else "sensor.window" for n in range(1100)], range(1100)),
    )
    assert metrics.layer_overflows._value.get() == before
    assert [(await layer.receive(hub))["n"] for _ in range(1100)] == list(range(1100))
    assert [(await layer.receive(door))["n"] for _ in range(550)] == list(range(1, 1100, 2))
    assert [(await layer.receive(window))["n"] for _ in range(550)] == list(range(0, 1100, 2))
