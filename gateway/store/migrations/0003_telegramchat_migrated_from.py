from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gateway", "0002_telegram"),
    ]

    operations = [
        migrations.AddField(
            model_name="telegramchat",
            name="migrated_from",
            field=models.BigIntegerField(null=True),
        ),
    ]
