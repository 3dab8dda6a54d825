"""The `telegram` protocol: a bot on aiogram, chat scopes, flow control, consumer base, test communicator.

Importing this package does not import aiogram; the server does, when it starts.
"""

from protocols.telegram.consumer import TelegramConsumer, button

__all__ = ["TelegramConsumer", "button"]
