"""What survives a restart: alerts, their event log (for resume), `seq`, sensor state, silences, the mode."""

from __future__ import annotations

from django.db import models


class SiteCounter(models.Model):
    """`seq` for a site: one increasing number, never reused."""

    site = models.CharField(primary_key=True, max_length=64)
    seq = models.BigIntegerField(default=0)


class Alert(models.Model):
    id = models.CharField(primary_key=True, max_length=16)
    site = models.CharField(max_length=64)
    rule = models.CharField(max_length=128)
    sensor = models.CharField(max_length=128)
    zone = models.CharField(max_length=64)
    severity = models.CharField(max_length=16)
    state = models.CharField(max_length=16)
    message = models.TextField()
    value = models.JSONField(null=True)
    groups = models.JSONField(default=list)
    raised_at = models.DateTimeField()
    acknowledged_at = models.DateTimeField(null=True)
    acknowledged_by = models.CharField(max_length=200, null=True)
    cleared_at = models.DateTimeField(null=True)
    # The silence that holds its notifications back, if one matches (SPEC: "silenced").
    silenced = models.CharField(max_length=16, null=True)
    # Escalation counts from here: the raise, or the end of the silence that held it.
    notify_from = models.DateTimeField(null=True)
    # The last escalation step fired (null: none), so a restart fires none twice.
    escalation = models.PositiveSmallIntegerField(null=True)
    # Its value as a person reads it ("open", "21.5 °C"; SPEC §11), at the raise and at the clear.
    display = models.CharField(max_length=200, null=True)

    class Meta:
        indexes = [
            models.Index(fields=["site", "state"]),
            models.Index(fields=["site", "rule", "sensor", "state"]),
            models.Index(fields=["site", "-raised_at"]),
            # Which alert a reading cleared (processes sharing a subscription: AlertBook.clear_sync).
            models.Index(fields=["site", "rule", "sensor", "cleared_at"]),
        ]


class AlertEvent(models.Model):
    """The outbox and replay log: every alert event, stored before it is broadcast."""

    site = models.CharField(max_length=64)
    seq = models.BigIntegerField()
    event = models.CharField(max_length=16)
    alert_id = models.CharField(max_length=16)
    alert = models.JSONField()
    at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["site", "seq"], name="alert_event_site_seq")]


class SensorState(models.Model):
    site = models.CharField(max_length=64)
    sensor = models.CharField(max_length=128)
    value = models.JSONField(null=True)
    online = models.BooleanField(null=True)
    updated_at = models.DateTimeField(null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["site", "sensor"], name="sensor_state_site_sensor")]


class TelegramChat(models.Model):
    """A chat the bot knows, and the last alert `seq` it has dealt with (for catching up after a restart)."""

    site = models.CharField(max_length=64)
    chat_id = models.BigIntegerField()
    type = models.CharField(max_length=16)
    title = models.CharField(max_length=256, null=True)
    username = models.CharField(max_length=64, null=True)
    seq = models.BigIntegerField(default=0)
    # The group this supergroup was upgraded from: it is allowed as that group was.
    migrated_from = models.BigIntegerField(null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["site", "chat_id"], name="telegram_chat_site_chat")]


class TelegramSubscription(models.Model):
    """A chat receives the alerts of `group`: "alerts" (every zone) or "alerts.<zone>"."""

    site = models.CharField(max_length=64)
    chat_id = models.BigIntegerField()
    group = models.CharField(max_length=128)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["site", "chat_id", "group"], name="telegram_sub_site_chat_group")
        ]


class TelegramMessage(models.Model):
    """The latest message about an alert in a chat: acknowledge and clear edit it, even after a restart."""

    site = models.CharField(max_length=64)
    alert_id = models.CharField(max_length=16)
    chat_id = models.BigIntegerField()
    message_id = models.BigIntegerField()
    state = models.CharField(max_length=16)  # the alert state the message shows

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["site", "alert_id", "chat_id"], name="telegram_msg_site_alert_chat"
            )
        ]


class Silence(models.Model):
    """Notifications held back for the alerts it matches (every matcher given must match), until `ends_at`."""

    id = models.CharField(primary_key=True, max_length=16)
    site = models.CharField(max_length=64)
    sensor = models.CharField(max_length=128, null=True)
    zone = models.CharField(max_length=64, null=True)
    rule = models.CharField(max_length=128, null=True)
    severity = models.CharField(max_length=16, null=True)
    comment = models.TextField(default="")
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    # Set when it ends, on time or removed early: its end has been dealt with (alerts notified).
    ended_at = models.DateTimeField(null=True)
    ended_by = models.CharField(max_length=200, null=True)

    class Meta:
        indexes = [models.Index(fields=["site", "ended_at"])]


class SiteMode(models.Model):
    """The site's arming mode, who set it and when (a restart compares `changed_at` with the schedules)."""

    site = models.CharField(primary_key=True, max_length=64)
    mode = models.CharField(max_length=64)
    changed_by = models.CharField(max_length=200)
    changed_at = models.DateTimeField()


class SensorMinute(models.Model):
    """A numeric sensor's readings over one minute (SPEC §11 history): kept `[history] keep`, then deleted."""

    site = models.CharField(max_length=64)
    sensor = models.CharField(max_length=128)
    minute = models.BigIntegerField()  # its start, epoch seconds UTC
    min = models.FloatField()
    max = models.FloatField()
    last = models.FloatField()
    # When the last reading came, in milliseconds into the minute: two processes' rows of one minute merge.
    last_ms = models.IntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["site", "sensor", "minute"], name="sensor_minute_site_sensor_minute"
            )
        ]
