"""What survives a restart: alerts, their event log (for resume), `seq`, sensor state."""

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

    class Meta:
        indexes = [
            models.Index(fields=["site", "state"]),
            models.Index(fields=["site", "rule", "sensor", "state"]),
            models.Index(fields=["site", "-raised_at"]),
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
