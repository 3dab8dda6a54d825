"""`SiteConsumer`: the site's own MQTT topics (SPEC §7, §10).

In: `gateway/<site>/ack` (an alert id), `gateway/<site>/silence` (the HTTP body's JSON),
`gateway/<site>/unsilence` (a silence id), `gateway/<site>/mode/set` (a mode name).
Out: `gateway/<site>/alerts` (alert and silence events, the WebSocket's envelopes) and the
current mode's name, retained, on `gateway/<site>/mode`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.alerting import GROUP, ModeError, SilenceError
from gateway.engine.alerts import AckRefused
from gateway.ops import logs, metrics
from gateway.runtime import MQTT_OUT, Runtime
from protocols.mqtt.consumer import MqttConsumer
from protocols.mqtt.types import MqttConnectEvent, MqttMessageEvent

# A silence request is a small JSON object (its comment: at most 500 characters).
MAX_COMMAND = 4096
_bad_input_log = logs.RateLimit(interval=30.0)
# A retained command comes again at every (re)subscription: said once an hour per topic.
_retained_log = logs.RateLimit(interval=3600.0)


def ack_topic(site: str) -> str:
    return f"gateway/{site}/ack"


def alerts_topic(site: str) -> str:
    return f"gateway/{site}/alerts"


def mode_topic(site: str) -> str:
    return f"gateway/{site}/mode"


def command_topics(site: str) -> dict[str, str]:
    """Topic -> what it asks (the `reason` label of its bad input), the ack topic first."""
    return {
        ack_topic(site): "ack",
        f"gateway/{site}/silence": "silence",
        f"gateway/{site}/unsilence": "unsilence",
        f"gateway/{site}/mode/set": "mode",
    }


class BadCommand(ValueError):
    """A command message that changes nothing, phrased for the log."""


class SiteConsumer(MqttConsumer):
    forwarder: asyncio.Task[None] | None = None
    tasks: set[asyncio.Task[None]]

    @property
    def runtime(self) -> Runtime:
        return self.scope["gateway"]  # type: ignore[no-any-return]

    @property
    def site(self) -> str:
        return self.runtime.config.gateway.site

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Ended or failed: an instance started again must not find this one's forwarder or
            # listener still acting for the site.
            self._leave()
            if self.forwarder is not None:
                with contextlib.suppress(Exception):  # the layer is away: not the cause to report
                    await self.channel_layer.group_discard(GROUP, self.channel_name)

    def _leave(self) -> None:
        if self.forwarder is not None:
            self.forwarder.cancel()
        if "gateway" in getattr(self, "scope", {}):
            self.runtime.alerting.listeners.discard(self._site_changed)

    async def _serve(self, *args: Any) -> None:
        # In the group before the first event: a silence that ended while the gateway was stopped
        # is announced as soon as the servers are up (gateway.server), maybe before mqtt.connect.
        await self._join()
        await super()._serve(*args)

    async def _join(self) -> None:
        # On the first event of whatever kind: a restarted instance gets no mqtt.connect.
        if self.channel_layer is not None and self.forwarder is None:
            self.tasks = set()
            self.forwarder = asyncio.ensure_future(self._forward())
            # Silence events come on the site's group; the mode, whoever changed it, through the listener.
            await self.channel_layer.group_add(GROUP, self.channel_name)
            self.runtime.alerting.listeners.add(self._site_changed)

    async def _forward(self) -> None:
        """Alert events from MQTT_OUT, which several MQTT processes share: each is published once."""
        while True:
            event = await self.channel_layer.receive(MQTT_OUT)
            if not await self._first(event):
                continue
            try:
                await self.alert_raised(event)
            except Exception as err:
                metrics.deliveries.labels("mqtt", "failed").inc()
                logs.mqtt.error("could not publish alert event %s: %s", event.get("seq"), err)

    async def _first(self, event: dict[str, Any]) -> bool:
        """False for an event another process already took (the Redis layer can hand it to two)."""
        if not event.get("saved", True):
            return True  # an unsaved event (seq 0): nothing to tell them apart
        return await self._claim(f"mqtt-out:{event['seq']}", f"alert event {event.get('seq')}")

    async def _claim(self, key: str, what: str) -> bool:
        claim = getattr(self.channel_layer, "claim", None)
        if claim is None:
            return True  # one process
        try:
            return bool(await claim(key))
        except Exception as err:  # Redis away: better twice than never
            logs.mqtt.warning("could not claim %s (%s); publishing it", what, err)
            return True

    async def mqtt_connect(self, event: MqttConnectEvent) -> None:
        await self._join()
        if self.runtime.alerting.modes:  # modes off: nothing to say (a reload turning them off clears it)
            await self._publish_mode()

    # In: commands

    async def mqtt_message(self, event: MqttMessageEvent) -> None:
        await self._join()
        topic = event["topic"]
        kind = command_topics(self.site).get(topic)
        if kind is None:
            return  # not ours (a reload cannot change the site, so it cannot happen)
        if kind == "ack":
            await self._ack(event)
            return
        if event["retain"]:
            # Replayed at every (re)subscription: a retained `mode/set` would undo every later change.
            self._bad(
                kind, topic, "a retained command is ignored (publish commands without retain)", _retained_log
            )
            return
        handlers: dict[str, Callable[[str], Awaitable[str]]] = {
            "silence": self._silence,
            "unsilence": self._unsilence,
            "mode": self._set_mode,
        }
        try:
            text = self._text(event["payload"])
            done = await handlers[kind](text)
        except BadCommand as err:
            self._bad(kind, topic, str(err), _bad_input_log)
            return
        except Exception as err:  # the database is away: not the sender's fault, and nothing changed
            metrics.deliveries.labels("database", "failed").inc()
            logs.mqtt.error("%s: could not apply the command: %s", topic, err)
            return
        logs.mqtt.info("%s: %s", topic, done)

    @staticmethod
    def _text(payload: bytes) -> str:
        if len(payload) > MAX_COMMAND:
            raise BadCommand(f"payload of {len(payload)} bytes is over {MAX_COMMAND}")
        try:
            return payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise BadCommand("payload is not UTF-8") from None

    async def _silence(self, text: str) -> str:
        try:
            request = json.loads(text)
        except ValueError:
            raise BadCommand('payload must be JSON such as {"zone":"kitchen","for":"2h"}') from None
        try:
            silence = await self.runtime.alerting.create_silence(request, "mqtt")
        except SilenceError as err:
            raise BadCommand(str(err)) from None
        return f"silence {silence['id']} created"

    async def _unsilence(self, text: str) -> str:
        if not text:
            raise BadCommand("payload must be a silence id")
        if await self.runtime.alerting.end_silence(text, "mqtt") is None:
            raise BadCommand(f"no active silence {text[:40]!r}")
        return f"silence {text} removed"

    async def _set_mode(self, text: str) -> str:
        try:
            await self.runtime.alerting.set_mode(text, "mqtt")
        except ModeError as err:
            raise BadCommand(str(err)) from None
        return f"mode {text} set"

    def _bad(self, kind: str, topic: str, why: str, limit: logs.RateLimit) -> None:
        metrics.bad_input.labels("mqtt", kind).inc()
        allowed, held = limit.allow(topic)
        if allowed:
            logs.mqtt.warning("%s: %s%s", topic, why, f" ({held} similar not logged)" if held else "")

    async def _ack(self, event: MqttMessageEvent) -> None:
        try:
            alert_id = event["payload"].decode("utf-8").strip()
        except UnicodeDecodeError:
            alert_id = ""
        if not alert_id or len(alert_id) > 32:
            metrics.bad_input.labels("mqtt", "ack").inc()
            logs.mqtt.warning("%s: payload must be an alert id", event["topic"])
            return
        try:
            change = await self.runtime.book.acknowledge(alert_id, "mqtt")
        except AckRefused as err:
            logs.mqtt.warning("%s: %s", event["topic"], err)
            return
        logs.alerts.info("alert %s acknowledged by mqtt", change.alert["id"])
        await self.runtime.broadcast(change)

    # Out: alert and silence events, the mode

    async def alert_raised(self, event: dict[str, Any]) -> None:
        await self.publish(alerts_topic(self.site), event["text"], qos=1)
        metrics.deliveries.labels("mqtt", "ok").inc()
        if "received" in event:
            metrics.latency.labels("mqtt").observe(time.time() - event["received"])

    alert_acknowledged = alert_cleared = alert_repeated = alert_escalated = alert_unsilenced = alert_raised

    async def site_silence(self, event: dict[str, Any]) -> None:
        """Every MQTT process hears it on the group; one publishes it."""
        silence = event["silence"]
        if not await self._claim(
            f"mqtt-silence:{silence['id']}:{event['event']}", f"silence {silence['id']}"
        ):
            return
        try:
            await self.publish(alerts_topic(self.site), event["text"], qos=1)
        except Exception as err:
            metrics.deliveries.labels("mqtt", "failed").inc()
            logs.mqtt.error("could not publish silence %s %s: %s", silence["id"], event["event"], err)
            return
        metrics.deliveries.labels("mqtt", "ok").inc()

    async def site_mode(self, event: dict[str, Any]) -> None:
        """Applied by SiteAlerting in this process, which tells `_site_changed`."""

    def _site_changed(self, what: str) -> None:
        if what == "mode":
            task = asyncio.ensure_future(self._publish_mode())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _publish_mode(self) -> None:
        """The current mode, retained (every MQTT process may: the same retained value twice is harmless).

        Modes turned off by a reload: the retained message is cleared (an empty retained payload)."""
        alerting = self.runtime.alerting
        mode = alerting.mode if alerting.modes else ""
        try:
            await self.publish(mode_topic(self.site), mode, qos=1, retain=True)
        except Exception as err:
            logs.mqtt.error("could not publish the mode %r: %s", mode, err)

    async def mqtt_disconnect(self, event: Any) -> None:
        if event["final"]:
            self._leave()
        await super().mqtt_disconnect(event)
