from django.urls import path

from gateway.web import pages, views

urlpatterns = [
    path("", pages.index),
    path("login", pages.login),
    path("logout", pages.logout),
    path("static/<str:name>", pages.asset),
    path("favicon.ico", pages.favicon),
    path("healthz", views.healthz),
    path("metrics", views.metrics_view),
    path("api/alerts", views.alerts),
    path("api/sensors", views.sensors),
    path("api/sensors/<str:sensor_id>/history", views.history),
    path("api/alerts/<str:alert_id>/ack", views.ack),
    path("api/silences", views.silences),
    path("api/silences/<str:silence_id>", views.silence),
    path("api/mode", views.mode),
    path("telegram/<str:secret>/", views.telegram_webhook),
]

handler404 = "gateway.web.views.not_found"
