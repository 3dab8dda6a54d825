"""`ChatBook`: Telegram chats, their subscriptions and the alert messages sent to them, in the database."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

from channels.db import database_sync_to_async as sync_to_async  # closes a broken or stale connection first
from django.db import transaction

from gateway.store.models import TelegramChat, TelegramMessage, TelegramSubscription
from protocols.telegram.types import Chat

__all__ = ["ChatBook"]


class ChatBook:
    def __init__(self, site: str) -> None:
        self.site = site
        self.migrated: dict[int, int] = {}  # supergroup -> the group it was upgraded from

    def allowed(self, chat_id: int, allowed_chats: Collection[int]) -> bool:
        """Whether the chat is allowed: listed, or upgraded from a group that is."""
        return chat_id in allowed_chats or self.migrated.get(chat_id) in allowed_chats

    def subscribed_chats_sync(self) -> list[Chat]:
        """Every chat with at least one subscription: the server makes their scopes at start-up."""
        self.migrated = dict(
            TelegramChat.objects.filter(site=self.site, migrated_from__isnull=False).values_list(
                "chat_id", "migrated_from"
            )
        )
        ids = set(TelegramSubscription.objects.filter(site=self.site).values_list("chat_id", flat=True))
        known = {c.chat_id: c for c in TelegramChat.objects.filter(site=self.site, chat_id__in=ids)}
        chats: list[Chat] = []
        for chat_id in sorted(ids):
            row = known.get(chat_id)
            chats.append(
                {
                    "id": chat_id,
                    "type": row.type if row else ("private" if chat_id > 0 else "group"),
                    "title": row.title if row else None,
                    "username": row.username if row else None,
                }
            )
        return chats

    def register_sync(self, chat: Chat) -> int:
        """Record the chat (its title may have changed); its `seq`, the last alert event it dealt with."""
        row, created = TelegramChat.objects.get_or_create(
            site=self.site,
            chat_id=chat["id"],
            defaults={"type": chat["type"], "title": chat["title"], "username": chat["username"]},
        )
        if not created and (row.type, row.title, row.username) != (
            chat["type"],
            chat["title"] or row.title,
            chat["username"] or row.username,
        ):
            row.type = chat["type"]
            row.title = chat["title"] or row.title
            row.username = chat["username"] or row.username
            row.save(update_fields=["type", "title", "username"])
        return row.seq

    def groups_sync(self, chat_id: int) -> set[str]:
        return set(
            TelegramSubscription.objects.filter(site=self.site, chat_id=chat_id).values_list(
                "group", flat=True
            )
        )

    def subscribe_sync(self, chat_id: int, group: str, seq: int) -> bool:
        """Add a subscription; False if it existed. A chat's first one starts it at `seq`: no history."""
        with transaction.atomic():
            had_any = TelegramSubscription.objects.filter(site=self.site, chat_id=chat_id).exists()
            _, created = TelegramSubscription.objects.get_or_create(
                site=self.site, chat_id=chat_id, group=group, defaults={"created_at": datetime.now(UTC)}
            )
            if not had_any:
                TelegramChat.objects.filter(site=self.site, chat_id=chat_id).update(seq=seq)
            return created

    def unsubscribe_sync(self, chat_id: int, group: str | None) -> list[str]:
        """Remove one subscription, or all of them (`group` None); the groups removed."""
        rows = TelegramSubscription.objects.filter(site=self.site, chat_id=chat_id)
        if group is not None:
            rows = rows.filter(group=group)
        removed = sorted(rows.values_list("group", flat=True))
        rows.delete()
        return removed

    def advance_sync(self, chat_id: int, seq: int) -> None:
        TelegramChat.objects.filter(site=self.site, chat_id=chat_id, seq__lt=seq).update(seq=seq)

    def message_sync(self, alert_id: str, chat_id: int) -> tuple[int, str] | None:
        row = TelegramMessage.objects.filter(site=self.site, alert_id=alert_id, chat_id=chat_id).first()
        return None if row is None else (row.message_id, row.state)

    def remember_sync(self, alert_id: str, chat_id: int, message_id: int, state: str, seq: int) -> None:
        with transaction.atomic():
            TelegramMessage.objects.update_or_create(
                site=self.site,
                alert_id=alert_id,
                chat_id=chat_id,
                defaults={"message_id": message_id, "state": state},
            )
            self.advance_sync(chat_id, seq)

    def migrate_sync(self, old: Chat, new: int) -> list[str]:
        """The group `old` is now the supergroup `new`: its subscriptions and position move; the groups."""
        with transaction.atomic():
            row = TelegramChat.objects.filter(site=self.site, chat_id=old["id"]).first()
            TelegramChat.objects.update_or_create(
                site=self.site,
                chat_id=new,
                defaults={
                    "type": "supergroup",
                    "title": old["title"],
                    "username": old["username"],
                    "seq": row.seq if row else 0,
                    "migrated_from": old["id"],
                },
            )
            groups = self.unsubscribe_sync(old["id"], None)
            for group in groups:
                TelegramSubscription.objects.get_or_create(
                    site=self.site, chat_id=new, group=group, defaults={"created_at": datetime.now(UTC)}
                )
            # The group's messages stay in the group: the supergroup cannot edit them.
            TelegramMessage.objects.filter(site=self.site, chat_id=old["id"]).delete()
        self.migrated[new] = old["id"]
        return groups

    subscribed_chats = sync_to_async(subscribed_chats_sync)
    migrate = sync_to_async(migrate_sync)
    register = sync_to_async(register_sync)
    groups = sync_to_async(groups_sync)
    subscribe = sync_to_async(subscribe_sync)
    unsubscribe = sync_to_async(unsubscribe_sync)
    advance = sync_to_async(advance_sync)
    message = sync_to_async(message_sync)
    remember = sync_to_async(remember_sync)
