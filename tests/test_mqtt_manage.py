"""Alert management over MQTT (SPEC §10) end to end: a gateway process on a real mosquitto.

`gateway/<site>/silence`, `/unsilence` and `/mode/set` in; silence and alert events on
`gateway/<site>/alerts` and the retained mode on `gateway/<site>/mode` out; escalation; what
survives a restart; hostile command payloads.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from tests.conftest import GatewayFactory, GatewayProcess, Service, metric, publish, until

MODES = '[gateway]\nmodes = ["home", "away", "night"]\nmode = "home"\n'

EXTRA = """
[[sensors]]
id = "hall-motion"
name = "Hall motion"
zone = "hall"
topic = "zigbee2mqtt/hall_motion"
format = "zigbee2mqtt"
field = "occupancy"

[[rules]]
id = "intruder"
sensor = "hall-motion"
modes = ["away"]
when = { equals = true }
clear = { equals = false }
severity = "critical"
message = "Motion in the hall"
on_raise = [{ topic = "alarm/siren", payload = "ON {alert.id}" }]

[[sensors]]
id = "cellar-leak"
name = "Cellar leak"
zone = "cellar"
topic = "zigbee2mqtt/cellar_leak"
format = "zigbee2mqtt"
field = "water_leak"

[[rules]]
id = "leak"
sensor = "cellar-leak"
when = { equals = true }
clear = { equals = false }
severity = "critical"
message = "Water in the cellar"

[[rules.escalate]]
after = "ESCALATE_AFTER"
notify = ["alerts.oncall"]
actions = [{ topic = "alarm/neighbour", payload = "call {alert.id}" }]
"""

SITE = "gateway/test"


class Watcher:
    """A subscriber on the broker: what arrives, in order, as (topic, payload text, retained)."""

    def __init__(self, port: int, topics: list[str], name: str) -> None:
        self.port, self.topics = port, topics
        self.queue: asyncio.Queue[tuple[str, str, bool]] = asyncio.Queue()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name)
        self.seen: list[tuple[str, str, bool]] = []  # every message received, in order
        self.taken: set[int] = set()  # those `next` returned

    async def __aenter__(self) -> Watcher:
        loop = asyncio.get_running_loop()
        subscribed = asyncio.Event()
        self.client.on_message = lambda c, u, m: loop.call_soon_threadsafe(
            self.queue.put_nowait, (m.topic, m.payload.decode("utf-8", "replace"), bool(m.retain))
        )
        self.client.on_subscribe = lambda *a: loop.call_soon_threadsafe(subscribed.set)
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in self.topics])
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        await asyncio.wait_for(subscribed.wait(), 5)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    async def next(self, match: Callable[[str, str], bool], timeout: float = 8.0) -> tuple[str, str, bool]:
        """The first message not taken yet that `match(topic, payload)` accepts (the others stay)."""
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for i in range(checked, len(self.seen)):
                if i not in self.taken and match(*self.seen[i][:2]):
                    self.taken.add(i)
                    return self.seen[i]
            checked = len(self.seen)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching MQTT message in time")
            self.seen.append(await asyncio.wait_for(self.queue.get(), left))

    def payloads(self, topic: str) -> list[str]:
        """Every payload seen on `topic` so far, taken or not."""
        return [p for t, p, _ in self.seen if t == topic]

    async def event(self, kind: str, event: str, timeout: float = 8.0) -> dict[str, Any]:
        """The next `{"type": kind, "event": event}` envelope on gateway/<site>/alerts."""

        def match(topic: str, payload: str) -> bool:
            if topic != f"{SITE}/alerts":
                return False
            body = json.loads(payload)
            return bool(body["type"] == kind and body["event"] == event)

        return json.loads((await self.next(match, timeout))[1])  # type: ignore[no-any-return]

    async def events(self, *wanted: tuple[str, str], timeout: float = 8.0) -> dict[tuple[str, str], Any]:
        """Each of these (type, event) envelopes, in whatever order they come (silence events and
        alert events travel apart)."""
        got: dict[tuple[str, str], Any] = {}

        def match(topic: str, payload: str) -> bool:
            if topic == f"{SITE}/alerts":
                body = json.loads(payload)
                if (body["type"], body["event"]) in wanted:
                    got[(body["type"], body["event"])] = body
            return len(got) == len(wanted)

        await self.next(match, timeout)
        return got


def on(topic: str) -> Callable[[str, str], bool]:
    return lambda t, p: t == topic


def managed(
    gateway_factory: GatewayFactory, mosquitto: Service, escalate_after: str = "1s", start: bool = True
) -> GatewayProcess:
    gw = gateway_factory(mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}", start=False)
    text = gw.config_path.read_text().replace("[gateway]\n", MODES, 1)
    gw.config_path.write_text(text + EXTRA.replace("ESCALATE_AFTER", escalate_after))
    if start:
        gw.start()
    return gw


def bad(gw: GatewayProcess, reason: str) -> float:
    return metric(gw, f'gateway_bad_input_total{{protocol="mqtt",reason="{reason}"}}')


async def test_silence_and_unsilence_over_mqtt(gateway_factory: GatewayFactory, mosquitto: Service) -> None:
    gw = managed(gateway_factory, mosquitto)
    port = mosquitto.port
    async with Watcher(port, [f"{SITE}/alerts", "zigbee2mqtt/siren/set"], "watcher") as w:
        await publish(port, f"{SITE}/silence", '{"zone":"house","for":"1h","comment":"painting the door"}')
        created = await w.event("silence", "created")
        silence = created["silence"]
        assert silence["zone"] == "house" and silence["comment"] == "painting the door"
        assert silence["created_by"] == "mqtt" and silence["sensor"] is None
        assert metric(gw, "gateway_silences_active") == 1

        # Raised and shown, marked silenced; its siren stays off.
        await publish(port, "zigbee2mqtt/front_door", '{"contact":false}')
        raised = await w.event("alert", "raised")
        alert = raised["alert"]
        assert alert["rule"] == "door-opened" and alert["silenced"] == silence["id"]

        await publish(port, f"{SITE}/unsilence", silence["id"])
        got = await w.events(("silence", "ended"), ("alert", "unsilenced"))
        assert got["silence", "ended"]["silence"]["id"] == silence["id"]
        unsilenced = got["alert", "unsilenced"]
        assert unsilenced["alert"]["id"] == alert["id"] and unsilenced["alert"]["silenced"] is None
        assert metric(gw, "gateway_silences_active") == 0
        # Its on_raise runs now, and the clear's on_clear after it: the siren heard nothing before.
        await publish(port, "zigbee2mqtt/front_door", '{"contact":true}')
        await w.event("alert", "cleared")
        await w.next(lambda t, p: t == "zigbee2mqtt/siren/set" and "OFF" in p)
        sirens = [json.loads(p) for p in w.payloads("zigbee2mqtt/siren/set")]
        assert sirens == [{"state": "ON", "alert": alert["id"]}, {"state": "OFF"}]


async def test_hostile_commands_change_nothing(gateway_factory: GatewayFactory, mosquitto: Service) -> None:
    port = mosquitto.port
    # Retained commands: the broker would hand them out again at every (re)subscription, so a
    # retained `mode/set` would undo every later change. Only their replays come marked retained
    # (a live one is delivered unmarked and acts once): these are ignored, said and counted.
    await publish(port, f"{SITE}/mode/set", "away", retain=True)
    await publish(port, f"{SITE}/silence", '{"zone":"house","for":"1h"}', retain=True)
    gw = managed(gateway_factory, mosquitto, start=False)
    gw.start()
    async with Watcher(port, [f"{SITE}/mode", "zigbee2mqtt/siren/set"], "hostile") as w:
        assert (await w.next(on(f"{SITE}/mode")))[1] == "home"
        hostile: list[tuple[str, bytes | str, str]] = [
            ("silence", b"\xff\xfe{", "silence"),
            ("silence", '{"zone":"house","for":', "silence"),
            ("silence", '{"zone":"house"}', "silence"),  # no `for`
            ("silence", '{"zone":"house","for":"30d"}', "silence"),
            ("silence", '{"colour":"red","for":"1h"}', "silence"),
            ("silence", '["zone","house"]', "silence"),
            ("silence", '{"zone":"' + "x" * 10_000 + '","for":"1h"}', "silence"),
            ("unsilence", "no-such-id", "unsilence"),
            ("unsilence", b"\x80\x81", "unsilence"),
            ("unsilence", "", "unsilence"),
            ("mode/set", "holiday", "mode"),
            ("mode/set", b"\xc3\x28", "mode"),
            ("mode/set", "a" * 5000, "mode"),
        ]
        await until(lambda: bad(gw, "silence") == bad(gw, "mode") == 1, what="retained commands ignored")
        assert "a retained command is ignored (publish commands without retain)" in gw.log
        counts = {reason: bad(gw, reason) for reason in ("silence", "unsilence", "mode")}
        for topic, payload, _ in hostile:
            await publish(port, f"{SITE}/{topic}", payload)
        want = {reason: counts[reason] + sum(1 for *_, r in hostile if r == reason) for reason in counts}
        await until(
            lambda: all(bad(gw, reason) == n for reason, n in want.items()),
            timeout=10,
            what="bad input counted",
        )
        assert "unknown mode 'holiday' (known: home, away, night)" in gw.log
        assert gw.proc is not None and gw.proc.poll() is None
        # Nothing changed: no silence, the site still at home, the door's siren still sounds.
        assert metric(gw, "gateway_silences_active") == 0
        await publish(port, "zigbee2mqtt/front_door", '{"contact":false}')
        assert json.loads((await w.next(on("zigbee2mqtt/siren/set")))[1])["state"] == "ON"
        assert w.payloads(f"{SITE}/mode") == ["home"]
        await publish(port, f"{SITE}/mode/set", "", retain=True)  # clear the retained command


async def test_mode_over_mqtt_is_retained_and_arms_rules(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = managed(gateway_factory, mosquitto)
    port = mosquitto.port
    async with Watcher(port, [f"{SITE}/mode", f"{SITE}/alerts", "alarm/siren"], "modes") as w:
        assert (await w.next(on(f"{SITE}/mode")))[1] == "home"
        # At home, motion is no alarm.
        await publish(port, "zigbee2mqtt/hall_motion", '{"occupancy":true}')
        await until(
            lambda: metric(gw, 'gateway_raises_suppressed_by_mode_total{rule="intruder"}') == 1,
            what="held back",
        )
        await publish(port, "zigbee2mqtt/hall_motion", '{"occupancy":false}')

        await publish(port, f"{SITE}/mode/set", "away")
        assert (await w.next(on(f"{SITE}/mode")))[1] == "away"
        async with Watcher(port, [f"{SITE}/mode"], "late") as late:
            assert (await late.next(on(f"{SITE}/mode")))[1:] == ("away", True)
        await publish(port, "zigbee2mqtt/hall_motion", '{"occupancy":true}')
        raised = await w.event("alert", "raised")
        assert raised["alert"]["rule"] == "intruder"
        assert (await w.next(on("alarm/siren")))[1] == f"ON {raised['alert']['id']}"
        assert "mode away set by mqtt" in gw.log


async def test_escalation_publishes_its_step_once(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = managed(gateway_factory, mosquitto, escalate_after="1s")
    port = mosquitto.port
    async with Watcher(port, [f"{SITE}/alerts", "alarm/neighbour"], "oncall") as w:
        await publish(port, "zigbee2mqtt/cellar_leak", '{"water_leak":true}')
        raised = (await w.event("alert", "raised"))["alert"]
        assert raised["escalation"] is None
        escalated = await w.event("alert", "escalated")
        assert escalated["level"] == 1 and escalated["alert"]["escalation"] == 1
        assert escalated["alert"]["id"] == raised["id"]
        assert (await w.next(on("alarm/neighbour")))[1] == f"call {raised['id']}"
        # Once: the clear comes next, with no second call before it.
        await publish(port, "zigbee2mqtt/cellar_leak", '{"water_leak":false}')
        await w.event("alert", "cleared")
        assert w.payloads("alarm/neighbour") == [f"call {raised['id']}"]
        assert metric(gw, 'gateway_escalation_steps_total{level="1"}') == 1


async def test_what_falls_due_while_stopped_happens_once_after_a_restart(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = managed(gateway_factory, mosquitto, escalate_after="3s")
    port = mosquitto.port
    door, leak = "zigbee2mqtt/siren/set", "alarm/neighbour"
    async with Watcher(port, [f"{SITE}/alerts", f"{SITE}/mode", door, leak], "restart") as w:
        await publish(port, f"{SITE}/mode/set", "night")
        await w.next(lambda t, p: t == f"{SITE}/mode" and p == "night")
        await publish(port, f"{SITE}/silence", '{"sensor":"front-door","for":"2s"}')
        silence = (await w.event("silence", "created"))["silence"]
        await publish(port, "zigbee2mqtt/front_door", '{"contact":false}')
        held = (await w.event("alert", "raised"))["alert"]
        assert held["silenced"] == silence["id"]
        await publish(port, "zigbee2mqtt/cellar_leak", '{"water_leak":true}')
        flood = (await w.event("alert", "raised"))["alert"]
        assert gw.stop() == 0

        # Stopped while the silence ends and the escalation step falls due: nothing to await but time.
        due = max(stamp(silence["ends_at"]), stamp(flood["raised_at"]) + 3.0)
        await asyncio.sleep(max(0.0, due - time.time()) + 0.2)
        assert w.payloads(door) == [] and w.payloads(leak) == []
        gw.start()

        got = await w.events(("silence", "ended"), ("alert", "unsilenced"), ("alert", "escalated"))
        assert got["silence", "ended"]["silence"]["id"] == silence["id"]
        assert got["alert", "unsilenced"]["alert"]["id"] == held["id"]
        assert (
            got["alert", "escalated"]["alert"]["id"] == flood["id"]
            and got["alert", "escalated"]["level"] == 1
        )
        await w.next(on(door))
        await w.next(on(leak))
        # Once each: the clears come after, with no second siren or call before their own messages.
        await publish(port, "zigbee2mqtt/front_door", '{"contact":true}')
        await publish(port, "zigbee2mqtt/cellar_leak", '{"water_leak":false}')
        await w.next(lambda t, p: t == door and "OFF" in p)
        await w.event("alert", "cleared")
        await w.event("alert", "cleared")
        assert [json.loads(p) for p in w.payloads(door)] == [
            {"state": "ON", "alert": held["id"]},
            {"state": "OFF"},
        ]
        assert w.payloads(leak) == [f"call {flood['id']}"]
        # The mode came back as it was, and went out again, retained.
        async with Watcher(port, [f"{SITE}/mode"], "after-restart") as late:
            assert (await late.next(on(f"{SITE}/mode")))[1:] == ("night", True)
        assert metric(gw, 'gateway_escalation_steps_total{level="1"}') == 1


def stamp(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def test_sighup_applies_modes_escalation_and_schedules(
    gateway_factory: GatewayFactory, mosquitto: Service
) -> None:
    gw = managed(gateway_factory, mosquitto, escalate_after="1h")
    port = mosquitto.port
    async with Watcher(port, [f"{SITE}/alerts", "alarm/siren", "alarm/neighbour"], "reload") as w:
        # At home the intruder rule holds its raise back.
        await publish(port, "zigbee2mqtt/hall_motion", '{"occupancy":true}')
        await until(lambda: metric(gw, SUPPRESSED) == 1, what="the raise held back")

        # The rule arms at home too, the leak escalates after 1 s, and a schedule in another zone.
        text = gw.config_path.read_text()
        text = text.replace('modes = ["away"]', 'modes = ["home", "away"]').replace('"1h"', '"1s"')
        text = text.replace('mode = "home"\n', 'mode = "home"\ntimezone = "Pacific/Auckland"\n', 1)
        text += '\n[[schedules]]\nmode = "night"\nat = "03:00"\n'
        assert gw.proc is not None
        gw.config_path.write_text(text)
        gw.proc.send_signal(signal.SIGHUP)
        await until(lambda: "config reloaded" in gw.log, what="the reload")
        assert "not applied until a restart" not in gw.log

        # The motion still there raises now, as on a switch into one of its modes.
        raised = (await w.event("alert", "raised"))["alert"]
        assert raised["rule"] == "intruder"
        assert (await w.next(on("alarm/siren")))[1] == f"ON {raised['id']}"
        await publish(port, "zigbee2mqtt/cellar_leak", '{"water_leak":true}')
        flood = (await w.event("alert", "raised"))["alert"]
        escalated = await w.event("alert", "escalated")
        assert escalated["alert"]["id"] == flood["id"] and escalated["level"] == 1
        assert (await w.next(on("alarm/neighbour")))[1] == f"call {flood['id']}"
        # The schedule is armed at 03:00 Auckland time.
        line = next(li for li in gw.log.splitlines() if "schedule: next switch to night at" in li)
        assert "T03:00:00+" in line, line


SUPPRESSED = 'gateway_raises_suppressed_by_mode_total{rule="intruder"}'


async def test_two_mqtt_processes_publish_each_silence_event_once(
    gateway_factory: GatewayFactory, mosquitto: Service, redis_server: Service, tmp_path: Path
) -> None:
    layer = f"redis://127.0.0.1:{redis_server.port}/0"
    database = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    procs = []
    for name in ("a", "b"):
        gw = gateway_factory(
            mqtt_url=f"mqtt://127.0.0.1:{mosquitto.port}",
            layer=layer,
            protocol="5",
            database=database,
            name=name,
            start=False,
        )
        # One site, two MQTT clients on a shared subscription: each command reaches one of them.
        text = gw.config_path.read_text().replace("[gateway]\n", MODES, 1)
        text = text.replace(
            'client_id = "gateway-test-test"', f'client_id = "gw-{name}"\nshared_group = "edge"'
        )
        gw.config_path.write_text(text)
        gw.start()
        procs.append(gw)
    port = mosquitto.port
    async with Watcher(port, [f"{SITE}/alerts"], "pair") as w:
        await publish(port, f"{SITE}/silence", '{"severity":"info","for":"1h"}')
        silence = (await w.event("silence", "created"))["silence"]
        for gw in procs:  # both apply it
            await until(lambda gw=gw: metric(gw, "gateway_silences_active") == 1, what="the silence in both")
        await publish(port, f"{SITE}/unsilence", silence["id"])
        await w.event("silence", "ended")
        for gw in procs:
            await until(lambda gw=gw: metric(gw, "gateway_silences_active") == 0, what="the end in both")
        events = [json.loads(p) for p in w.payloads(f"{SITE}/alerts")]
        assert [(e["type"], e["event"]) for e in events] == [("silence", "created"), ("silence", "ended")]
        await publish(port, f"{SITE}/mode/set", "night")
    async with Watcher(port, [f"{SITE}/mode"], "pair-mode") as late:
        await late.next(lambda t, p: p == "night")
