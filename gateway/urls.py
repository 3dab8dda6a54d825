from django.urls import path

from gateway import views

urlpatterns = [
    path("", views.index),
    path("healthz", views.healthz),
    path("metrics", views.metrics_view),
    path("api/alerts", views.alerts),
    path("api/alerts/<str:alert_id>/ack", views.ack),
    path("telegram/<str:secret>/", views.telegram_webhook),
]

handler404 = "gateway.views.not_found"
