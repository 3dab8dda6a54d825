"""Sensor history (SPEC §11): one row per numeric sensor per minute."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("gateway", "0005_alert_display")]

    operations = [
        migrations.CreateModel(
            name="SensorMinute",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("site", models.CharField(max_length=64)),
                ("sensor", models.CharField(max_length=128)),
                ("minute", models.BigIntegerField()),
                ("min", models.FloatField()),
                ("max", models.FloatField()),
                ("last", models.FloatField()),
                ("last_ms", models.IntegerField()),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("site", "sensor", "minute"), name="sensor_minute_site_sensor_minute"
                    )
                ],
            },
        ),
    ]
