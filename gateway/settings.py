"""Django settings built from the one `Config`; there is no settings module to import."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway.config import Config
from gateway.redis_url import layer_host

# Per-channel queue length. Channels' default of 100 drops silently under an
# alert burst to a busy dashboard; overflows past this are counted (gateway.layers.memory).
CHANNEL_CAPACITY = 2000
# On Redis the capacity is not a consumer's: channels_redis keeps every consumer channel of a
# process ("specific.<id>!<name>") in one key and checks the capacity against that key, so the
# dashboards, sensors and chats of a process share it. An alert storm of 1,000 changes filled
# 2,000 (each change goes to several groups: `alerts`, its sensor's) while the process took one
# message per round trip, and dashboards missed alerts (the quick bench's storm, 2 slow cores).
# An alert's message is under 1 KiB: at most about 15 MiB of Redis while a process catches up.
REDIS_PROCESS_CAPACITY = 20_000
GROUP_EXPIRY_NEVER = 100 * 365 * 86400


def database(config: Config) -> dict[str, Any]:
    url = config.gateway.database
    if url and urlsplit(url).scheme in ("postgres", "postgresql"):
        parts = urlsplit(url)
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or "gateway",
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": None,
            "CONN_HEALTH_CHECKS": True,
        }
    path = Path(urlsplit(url).path) if url else config.gateway.state_dir / "gateway.sqlite3"
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        # One connection kept open (the default 0 reopens the file, and reruns the PRAGMAs, per call).
        "CONN_MAX_AGE": None,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {
            # WAL lets dashboards read while an alert is written; IMMEDIATE takes
            # the write lock up front instead of failing half-way with "locked".
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 5,
        },
    }


def channel_layers(config: Config) -> dict[str, Any]:
    url = config.gateway.channel_layer
    if url == "memory":
        return {
            "default": {
                "BACKEND": "gateway.layers.memory.MemoryLayer",
                # Members leave when their consumer ends; a day's expiry (the default) would
                # silently drop chats and the MQTT publisher from `alerts` after a day's uptime.
                "CONFIG": {"capacity": CHANNEL_CAPACITY, "group_expiry": GROUP_EXPIRY_NEVER},
            }
        }
    return {
        "default": {
            "BACKEND": "gateway.layers.redis.RedisLayer",
            "CONFIG": {
                # redis-py 8 made socket_timeout 5 s by default, which kills the
                # layer's 5 s blocking pop on any idle consumer (channels_redis#422).
                "hosts": [layer_host(url, socket_timeout=15, socket_connect_timeout=5)],
                "capacity": REDIS_PROCESS_CAPACITY,
                "prefix": f"gateway.{config.gateway.site}:",
            },
        }
    }


def secret_key(state_dir: Path) -> str:
    """A key kept in state_dir, so sessions survive restarts."""
    path = state_dir / "secret_key"
    try:
        # Created exclusively, mode 600 from the start: split processes starting together agree.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):
            key = path.read_text().strip()
            if key:
                return key
            time.sleep(0.01)  # the process that created it is writing it
        raise RuntimeError(f"{path} is empty: delete it to have a new key made") from None
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as file:
        file.write(key)
    return key


def private_state(config: Config) -> None:
    """state_dir 0700 when it is made, and the SQLite file 0600 (SQLite gives its -wal and -shm
    files the same mode): alerts and sessions are nobody else's business, systemd or not."""
    config.gateway.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = database(config)
    if db["ENGINE"] == "django.db.backends.sqlite3":
        fd = os.open(db["NAME"], os.O_RDONLY | os.O_CREAT, 0o600)  # SQLite would make it 0644
        try:
            mode = os.fstat(fd).st_mode
            if mode & 0o077:  # made by an older version
                os.fchmod(fd, mode & 0o700)
        finally:
            os.close(fd)


def build(config: Config) -> dict[str, Any]:
    return {
        "DEBUG": False,
        "SECRET_KEY": secret_key(config.gateway.state_dir),
        # Host is checked before Django (gateway.web.security.refusal): for the WebSocket too, and a
        # reload changes http.hosts there.
        "ALLOWED_HOSTS": ["*"],
        "INSTALLED_APPS": ["gateway.store.apps.GatewayConfig", "django.contrib.sessions"],
        # CSRF is per view (csrf_protect on the dashboard's forms), so API and health requests skip it.
        "MIDDLEWARE": ["gateway.web.security.security_headers"],
        "CSRF_COOKIE_HTTPONLY": True,
        "CSRF_COOKIE_SAMESITE": "Strict",
        "CSRF_FAILURE_VIEW": "gateway.web.pages.csrf_failure",
        # Behind a TLS-terminating proxy: the session cookie gets its Secure flag.
        "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"),
        "ROOT_URLCONF": "gateway.web.urls",
        "DATABASES": {"default": database(config)},
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
        "USE_TZ": True,
        "TIME_ZONE": "UTC",
        "CHANNEL_LAYERS": channel_layers(config),
        "LOGGING_CONFIG": None,
        # Sessions live in the database, so logging out ends one for good; the cookie carries
        # only a random key. Used by gateway.web.auth (no session middleware: most requests need none).
        "SESSION_ENGINE": "django.contrib.sessions.backends.db",
        "SESSION_COOKIE_NAME": "gateway_session",
        "SESSION_COOKIE_AGE": 30 * 24 * 3600,
        "DATA_UPLOAD_MAX_MEMORY_SIZE": 1024 * 1024,
    }


def setup(config: Config) -> None:
    """Configure and set up Django once per process, and bring the database schema up to date."""
    import django
    from django.conf import settings

    from gateway.ops.process import package_on_use

    # Django imports sqlparse with its database backends, to split SQL scripts (migrations, flush):
    # its package's __init__ (formatter, filters, command line) runs then, not at start-up (0.5 MiB).
    package_on_use("sqlparse")
    private_state(config)
    settings.configure(**build(config))
    django.setup(set_prefix=False)
    migrate()


def migrate() -> None:
    """Apply what is missing of the schema; when nothing is (every start but the first after an
    upgrade), only one query: the migration framework costs about 1.5 MiB of RSS, kept for good."""
    from django.db import connection

    if pending_migrations(connection):
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
    connection.close()


def pending_migrations(connection: Any) -> bool:
    """Whether a migration file of gateway.store.migrations or of the sessions is not in the database's
    django_migrations."""
    import pkgutil

    from django.contrib.sessions import migrations as sessions
    from django.db import DatabaseError

    from gateway.store import migrations

    shipped = {
        (app, m.name)
        for app, package in (("gateway", migrations), ("sessions", sessions))
        for m in pkgutil.iter_modules(package.__path__)
        if m.name[:1].isdigit()
    }
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT app, name FROM django_migrations WHERE app IN ('gateway', 'sessions')")
            applied = {(app, name) for app, name in cursor.fetchall()}
    except DatabaseError:  # no django_migrations table yet: a new database
        return True
    return not shipped <= applied
