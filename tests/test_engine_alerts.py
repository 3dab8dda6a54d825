"""The pure alert lifecycle and sensor board, clocked from outside: no database, no event loop."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.config import Rule, Sensor, parse_config
from gateway.engine import alerts
from gateway.engine.alerts import AckRefused, AlertChange, AlertRecord
from gateway.engine.board import SensorBoard

T0 = datetime(2026, 12, 6, 14, 5, 9, 123456, tzinfo=UTC)


def rule_and_sensor(**rule: object) -> tuple[Rule, Sensor]:
    config = parse_config(
        {
            "sensors": [
                {
                    "id": "tank",
                    "name": "Rain tank",
                    "zone": "garden",
                    "topic": "garden/tank",
                    "format": "plain",
                }
            ],
            "rules": [{"id": "low", "sensor": "tank", "when": {"below": 10}, **rule}],
        },
        {},
        "test",
    )
    return config.rules[0], config.sensors[0]


def raised(**rule: object) -> AlertRecord:
    return alerts.raise_alert(*rule_and_sensor(**rule), 4.5, "home", T0)


def test_iso_is_utc_to_the_millisecond_with_a_z() -> None:
    assert alerts.iso(T0) == "2026-12-06T14:05:09.123Z"
    assert alerts.iso(T0.astimezone(timezone(timedelta(hours=-5)))) == "2026-12-06T14:05:09.123Z"
    assert alerts.iso(None) is None


def test_ids_are_six_characters_easy_to_type() -> None:
    ids = {alerts.new_id() for _ in range(200)}
    assert len(ids) > 190
    assert all(len(i) == 6 and not set(i) & set("01oli") for i in ids)


def test_groups_are_alerts_the_zone_the_sensor_and_notify_sorted() -> None:
    rule, sensor = rule_and_sensor(notify=["alerts.house", "alerts"])
    assert alerts.alert_groups(rule, sensor) == ["alerts", "alerts.garden", "alerts.house", "sensor.tank"]


def test_a_raise_is_an_active_alert_at_the_time_given() -> None:
    alert = raised(severity="critical", message="{sensor.name} at {site}: {value}")
    assert (alert.site, alert.rule, alert.sensor, alert.zone) == ("home", "low", "tank", "garden")
    assert (alert.state, alert.severity, alert.message, alert.value) == (
        "active",
        "critical",
        "Rain tank at home: 4.5",
        4.5,
    )
    assert alert.groups == ("alerts", "alerts.garden", "sensor.tank")
    assert alert.as_json() == {
        "id": alert.id,
        "rule": "low",
        "sensor": "tank",
        "zone": "garden",
        "severity": "critical",
        "state": "active",
        "message": "Rain tank at home: 4.5",
        "value": 4.5,
        "raised_at": "2026-12-06T14:05:09.123Z",
        "acknowledged_at": None,
        "acknowledged_by": None,
        "cleared_at": None,
        "silenced": None,
        "escalation": None,
        "display": "4.5",
    }


def test_a_raise_with_its_own_message_keeps_it_as_it_is() -> None:
    alert = alerts.raise_alert(*rule_and_sensor(), None, "home", T0, message="{not a template}")
    assert alert.message == "{not a template}"


def test_acknowledge_then_clear() -> None:
    alert = raised()
    later = T0 + timedelta(seconds=30)
    acked = alerts.acknowledge(alert.id, alert, "web:ann", later)
    assert (acked.state, acked.acknowledged_at, acked.acknowledged_by) == ("acknowledged", later, "web:ann")
    assert alert.state == "active"  # a new record: the one given is left as it was
    cleared = alerts.clear(acked, 12.0, later + timedelta(minutes=1))
    assert cleared is not None
    assert (cleared.state, cleared.value, cleared.acknowledged_by) == ("cleared", 12.0, "web:ann")
    assert cleared.as_json()["cleared_at"] == "2026-12-06T14:06:39.123Z"


def test_the_three_refused_acknowledgements() -> None:
    with pytest.raises(AckRefused, match=r"^no alert with id 'ZZZ9 '$"):
        alerts.acknowledge("ZZZ9 ", None, "mqtt", T0)
    acked = alerts.acknowledge("x", raised(), "telegram:@ann", T0)
    with pytest.raises(AckRefused, match=f"^alert {acked.id} was already acknowledged by telegram:@ann$"):
        alerts.acknowledge(acked.id, acked, "mqtt", T0)
    cleared = alerts.clear(raised(), 12, T0)
    assert cleared is not None
    with pytest.raises(AckRefused, match=f"^alert {cleared.id} is already cleared$"):
        alerts.acknowledge(cleared.id, cleared, "mqtt", T0)


def test_only_an_open_alert_clears_and_only_an_active_one_repeats() -> None:
    alert = raised()
    assert alerts.clear(None, 1, T0) is None
    cleared = alerts.clear(alert, 12, T0)
    assert alerts.clear(cleared, 13, T0) is None
    assert alerts.repeat(alert) is alert
    assert alerts.repeat(None) is None
    assert alerts.repeat(alerts.acknowledge(alert.id, alert, "mqtt", T0)) is None
    assert alerts.repeat(cleared) is None


def test_a_change_is_encoded_once_as_its_envelope() -> None:
    alert = raised()
    change = AlertChange.make("raised", 7, alert.as_json(), alert.groups)
    assert change.saved
    assert json.loads(change.text) == {"type": "alert", "event": "raised", "seq": 7, "alert": alert.as_json()}


def test_an_unsaved_raise_is_marked_saved_false_with_seq_0() -> None:
    rule, sensor = rule_and_sensor()
    change = AlertChange.unsaved("raised", rule, sensor, 4.5, None, T0)
    assert (change.event, change.seq, change.saved) == ("raised", 0, False)
    assert change.groups == ("alerts", "alerts.garden", "sensor.tank")
    assert change.alert["state"] == "active"
    assert change.alert["raised_at"] == "2026-12-06T14:05:09.123Z"
    envelope = json.loads(change.text)
    assert (envelope["seq"], envelope["saved"], envelope["alert"]) == (0, False, change.alert)


def test_an_unsaved_clear_clears_what_was_announced() -> None:
    rule, sensor = rule_and_sensor()
    announced = AlertChange.unsaved("raised", rule, sensor, 4.5, None, T0).alert
    change = AlertChange.unsaved("cleared", rule, sensor, 11, announced, T0 + timedelta(seconds=1))
    assert (change.seq, change.saved) == (0, False)
    cleared_at = "2026-12-06T14:05:10.123Z"
    assert change.alert == {
        **announced,
        "state": "cleared",
        "value": 11,
        "cleared_at": cleared_at,
        "display": "11",
    }
    assert announced["state"] == "active"  # copied, not changed in place


def test_the_board_keeps_the_last_reading_at_the_time_given() -> None:
    _, sensor = rule_and_sensor()
    board = SensorBoard([sensor])
    ts = T0.timestamp()
    assert board.update("tank", 4.5, True, ts)
    assert not board.update("tank", 4.5, True, ts + 0.5)  # same value: no news, but it is the latest
    assert board.update("tank", 4, True, ts + 2)  # 4 is not 4.5
    assert not board.update("nobody", 1, True, ts)
    [tank] = board.snapshot(recent=True)
    assert tank == {
        "id": "tank",
        "name": "Rain tank",
        "zone": "garden",
        "value": 4,
        "online": True,
        "updated_at": "2026-12-06T14:05:11.123Z",
        "unit": "",
        "device_class": "",
        "display": "4",
        # one point a second at most: the second reading took the first one's place
        "recent": [[int(ts * 1000), 4.5], [int((ts + 2) * 1000), 4]],
    }


def test_the_board_applies_a_peers_event_unless_it_is_older() -> None:
    _, sensor = rule_and_sensor()
    board = SensorBoard([sensor])
    board.update("tank", 4.5, True, T0.timestamp())
    board.apply({"id": "tank", "value": 3, "online": True, "updated_at": "2026-12-06T14:05:08.000Z"})
    assert board.snapshot()[0]["value"] == 4.5
    board.apply({"id": "tank", "value": 3, "online": False, "updated_at": "2026-12-06T14:05:10.000Z"})
    assert board.snapshot()[0] == {
        "id": "tank",
        "name": "Rain tank",
        "zone": "garden",
        "value": 3,
        "online": False,
        "updated_at": "2026-12-06T14:05:10.000Z",
        "unit": "",
        "device_class": "",
        "display": "3",
    }
    board.apply({"id": "tank", "value": 1, "updated_at": "not a time"})
    board.apply({"id": "elsewhere", "value": 1, "updated_at": "2026-12-06T14:05:11.000Z"})
    assert board.snapshot()[0]["value"] == 3


def test_the_board_follows_a_reload() -> None:
    _, sensor = rule_and_sensor()
    board = SensorBoard([sensor])
    board.update("tank", 4.5, True, T0.timestamp())
    renamed = sensor.model_copy(update={"name": "Tank", "zone": "yard"})
    other = sensor.model_copy(update={"id": "well", "name": "Well"})
    board.configure([renamed, other])
    assert [(s["id"], s["name"], s["zone"], s["value"]) for s in board.snapshot()] == [
        ("tank", "Tank", "yard", 4.5),
        ("well", "Well", "garden", None),
    ]
    board.configure([other])
    assert list(board.sensors) == ["well"]


def test_ids_drawn_many_at_once_look_like_single_ones() -> None:
    ids = alerts.new_ids(5000)
    assert len(ids) == 5000 and all(len(i) == 6 and set(i) <= set(alerts._ALPHABET) for i in ids)
    # Every letter about as often (uniform: 248 byte values map 8 to each of the 31 letters).
    counts = Counter("".join(alerts.new_ids(20000)))
    assert set(counts) == set(alerts._ALPHABET)
    expected = 6 * 20000 / len(alerts._ALPHABET)
    assert all(abs(n - expected) < 0.1 * expected for n in counts.values()), counts
