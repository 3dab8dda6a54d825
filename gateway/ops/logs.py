"""Named loggers of the project, in one place, and a per-key rate limit for noisy input."""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import quote

from gateway.engine.text import CONTROL_CHARACTERS

server = logging.getLogger("gateway.server")
mqtt = logging.getLogger("gateway.mqtt")
web = logging.getLogger("gateway.web")
telegram = logging.getLogger("gateway.telegram")
alerts = logging.getLogger("gateway.alerts")
sensors = logging.getLogger("gateway.sensors")
layer = logging.getLogger("gateway.layer")
broker = logging.getLogger("gateway.broker")
worker = logging.getLogger("gateway.worker")


class RateLimit:
    """Allow one log line per key per `interval` seconds; count what was held back."""

    def __init__(self, interval: float = 10.0, max_keys: int = 10_000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """(may log now, lines held back since the last one)."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        if len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[key] = now
        return True, self._held.pop(key, 0)


_secrets: set[str] = set()


def add_secret(secret: str) -> None:
    """Never print this string: every log line and `redact`ed text shows `<redacted>` instead.

    Its percent-encoded forms too: an error that repeats a URL may spell `:` as `%3A` or `%3a`."""
    if len(secret) >= 8:
        encoded = quote(secret, safe="")
        _secrets.update({secret, encoded, re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), encoded)})


def hide_bot_token(token: str) -> None:
    """Keep a Telegram bot token out of every log line and `redact`ed text, whole or by its secret half."""
    add_secret(token)
    add_secret(token.partition(":")[2])  # however the bot id before it is spelled


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "<redacted>")
    return text


def escape(text: str) -> str:
    """`text` on one line: control characters as Python writes them in a repr (`\\n`, `\\x1b`)."""
    return CONTROL_CHARACTERS.sub(lambda m: repr(m.group())[1:-1], text)


class _Redacting(logging.Formatter):
    # On the whole line, traceback included: a Bot API URL carries the bot token.
    def format(self, record: logging.LogRecord) -> str:
        # A traceback follows its message indented: only a record's first line starts at column 0,
        # so no line of it (an exception's text from outside included) passes for a record.
        return redact(super().format(record).replace("\n", "\n  "))

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        # The message, with every value from outside in it, stays one line; a traceback after it
        # keeps its lines (see format).
        record.message = escape(record.message)
        return super().formatMessage(record)


class _NotHealth503(logging.Filter):
    # A 503 from /healthz is the answer, not a server error; Django would log each poll.
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "django.request" and "/healthz" in record.getMessage())


def setup(level: str = "INFO") -> None:
    """One line per event on stderr, for journald."""
    handler = logging.StreamHandler()
    handler.setFormatter(_Redacting("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    handler.addFilter(_NotHealth503())
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter that would print a line per connection or per message.
    for name in ("daphne", "amqtt", "transitions", "django.channels.server", "aiogram.event"):
        logging.getLogger(name).setLevel(logging.WARNING)
