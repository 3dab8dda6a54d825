"""`SilenceBook`: the site's silences and its arming mode in the database.

A silence is stored when made and marked when it ends (on time or removed early), so a restart
knows which ends are still to be dealt with (the alerts it held are notified then), even an end
that fell while the gateway was stopped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from channels.db import database_sync_to_async as sync_to_async
from django.db import IntegrityError, transaction

from gateway.engine.alerts import iso, new_id
from gateway.engine.silences import MATCHERS
from gateway.store.models import Silence, SiteMode

__all__ = ["SilenceBook"]


def silence_json(row: Silence) -> dict[str, Any]:
    """The silence object every protocol is told of (absent matchers null)."""
    return {
        "id": row.id,
        "sensor": row.sensor,
        "zone": row.zone,
        "rule": row.rule,
        "severity": row.severity,
        "comment": row.comment,
        "created_by": row.created_by,
        "created_at": iso(row.created_at),
        "ends_at": iso(row.ends_at),
    }


class SilenceBook:
    def __init__(self, site: str) -> None:
        self.site = site

    def create_sync(
        self, matchers: dict[str, str], comment: str, by: str, now: datetime, ends_at: datetime
    ) -> dict[str, Any]:
        """A new silence; `matchers` holds at least one of MATCHERS (checked by the engine before)."""
        unknown = set(matchers) - set(MATCHERS)
        if unknown or not matchers:
            raise ValueError(f"a silence matches by one or more of {', '.join(MATCHERS)}")
        for _ in range(5):
            try:
                with transaction.atomic():
                    row = Silence.objects.create(
                        id=new_id(),
                        site=self.site,
                        comment=comment,
                        created_by=by,
                        created_at=now,
                        ends_at=ends_at,
                        **matchers,
                    )
                return silence_json(row)
            except IntegrityError:
                continue  # an id collision: draw again
        raise RuntimeError("could not draw a free silence id")

    def end_sync(self, silence_id: str, by: str, now: datetime) -> dict[str, Any] | None:
        """Ends a silence still running (removed early, or come to its end); None if there is none."""
        with transaction.atomic():
            row = (
                Silence.objects.select_for_update()
                .filter(site=self.site, id=silence_id.strip().lower(), ended_at__isnull=True)
                .first()
            )
            if row is None:
                return None
            row.ended_at, row.ended_by = now, by
            row.save(update_fields=["ended_at", "ended_by"])
            return silence_json(row)

    def running_sync(self) -> list[dict[str, Any]]:
        """Every silence not yet ended, oldest first: the active ones and those whose end is due."""
        rows = Silence.objects.filter(site=self.site, ended_at__isnull=True).order_by("created_at")
        return [silence_json(row) for row in rows]

    def mode_sync(self) -> dict[str, Any] | None:
        """The stored mode: {"mode", "changed_by", "changed_at"}, or None before the first switch."""
        row = SiteMode.objects.filter(site=self.site).first()
        if row is None:
            return None
        return {"mode": row.mode, "changed_by": row.changed_by, "changed_at": iso(row.changed_at)}

    def set_mode_sync(self, mode: str, by: str, now: datetime, once: bool = False) -> dict[str, Any] | None:
        """Store the mode; `once`: a switch due at `now` (a schedule's) that another process may have
        stored already: None then, and nothing changes."""
        with transaction.atomic():
            row = SiteMode.objects.select_for_update().filter(site=self.site).first()
            if once and row is not None and row.changed_at >= now:
                return None
            SiteMode.objects.update_or_create(
                site=self.site, defaults={"mode": mode, "changed_by": by, "changed_at": now}
            )
        return {"mode": mode, "changed_by": by, "changed_at": iso(now)}

    create = sync_to_async(create_sync)
    end = sync_to_async(end_sync)
    running = sync_to_async(running_sync)
    mode = sync_to_async(mode_sync)
    set_mode = sync_to_async(set_mode_sync)
