"""Alerts carry their value as a person reads it (SPEC §11): null for alerts from before."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("gateway", "0004_silences_modes_escalation")]

    operations = [
        migrations.AddField(
            model_name="alert", name="display", field=models.CharField(max_length=200, null=True)
        ),
    ]
