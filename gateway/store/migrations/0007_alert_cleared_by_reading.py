"""Which alert a reading cleared, looked up by processes sharing a subscription (AlertBook.clear_sync)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("gateway", "0006_sensor_minute")]

    operations = [
        migrations.AddIndex(
            model_name="alert",
            index=models.Index(
                fields=["site", "rule", "sensor", "cleared_at"], name="gateway_ale_site_c0b5a6_idx"
            ),
        ),
    ]
