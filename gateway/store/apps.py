from django.apps import AppConfig


class GatewayConfig(AppConfig):
    # The Django app is the store; its label stays "gateway": tables and migration history keep their names.
    name = "gateway.store"
    label = "gateway"
    default_auto_field = "django.db.models.BigAutoField"
