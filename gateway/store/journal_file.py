"""The alert journal's file: one line per alert change, appended with one `write(2)`.

No database here (gateway.store.journal copies the lines into it): the file can be read and
checked on its own.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import operator
import os
from datetime import datetime
from pathlib import Path

from gateway.engine.alerts import AlertRecord
from gateway.engine.formats import Value
from gateway.engine.text import compact_json
from gateway.ops import logs, metrics

__all__ = ["Entry", "JournalBusy", "JournalFile", "journal_path"]

log = logs.server

_FIELDS = tuple(f.name for f in dataclasses.fields(AlertRecord))
_DATES = ("raised_at", "acknowledged_at", "cleared_at", "notify_from")
# What the alert's JSON (AlertRecord.as_json) lacks, or shows otherwise: written beside it.
_NOT_TOLD = frozenset({"site", "groups", "display", *_DATES})
_dates = operator.attrgetter(*_DATES)  # an alert's, in that order (in C: no generator per line)


class JournalBusy(RuntimeError):
    """Another process holds the journal (two gateways on one state_dir with the in-memory layer)."""


def journal_path(state_dir: Path, site: str) -> Path:
    return state_dir / f"alerts-{site}.journal"


@dataclasses.dataclass(slots=True)
class Entry:
    """One line of the journal: an alert event, the alert after it, and the reading behind it."""

    seq: int
    event: str
    at: datetime
    alert: AlertRecord
    reading: tuple[str, Value | None, bool | None] | None = None

    def line(self, told: str) -> bytes:
        """The line: `[seq, at, reading, [what the alert JSON lacks or rounds], told]`.

        `told` is the event's envelope as every protocol gets it (AlertChange.text, built anyway),
        written as it is: the line costs one small JSON encoding, not the whole alert's again.
        """
        a = self.alert
        extra = [a.site, a.groups, a.display, *[None if d is None else d.isoformat() for d in _dates(a)]]
        head = compact_json([self.seq, self.at.isoformat(), self.reading, extra])
        return f"{head[:-1]},{told}]\n".encode()

    @classmethod
    def parse(cls, line: bytes) -> Entry:
        seq, at, reading, extra, told = json.loads(line)
        fields = {name: told["alert"][name] for name in _FIELDS if name not in _NOT_TOLD}
        site, groups, display, *dates = extra
        fields.update(site=site, groups=tuple(groups), display=display)
        moments = zip(_DATES, dates, strict=True)  # one short: ValueError, an unreadable line
        fields.update({name: None if d is None else datetime.fromisoformat(d) for name, d in moments})
        if int(told["seq"]) != int(seq):
            raise ValueError(f"seq {seq} told as {told['seq']}")
        return cls(
            seq=int(seq),
            event=str(told["event"]),
            at=datetime.fromisoformat(at),
            alert=AlertRecord(**fields),
            reading=None if reading is None else (str(reading[0]), reading[1], reading[2]),
        )


class JournalFile:
    """The append-only file, locked by this process for as long as it runs."""

    def __init__(self, path: Path, fsync: bool = False) -> None:
        self.path, self.fsync = path, fsync
        self.fd = -1
        self.size = 0

    def open(self) -> list[Entry]:
        """Lock the file and read the entries in it: the readable prefix, in increasing `seq`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalBusy(
                f'{self.path} is held by another gateway process: with channel_layer = "memory" '
                "run one process per state_dir (or use a Redis layer for several)"
            ) from None
        self.fd = fd
        with open(self.path, "rb") as f:
            data = f.read()
        self.size = len(data)
        entries: list[Entry] = []
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            try:
                if end < 0:
                    raise ValueError("no end of line")
                entry = Entry.parse(data[start:end])
                if entries and entry.seq <= entries[-1].seq:
                    raise ValueError(f"seq {entry.seq} after {entries[-1].seq}")
            except (ValueError, KeyError, TypeError, IndexError) as err:
                # A power cut while the kernel wrote the file out (its tail torn or zeroed): what
                # follows cannot be trusted. What came before is replayed.
                metrics.bad_input.labels("journal", "unreadable").inc()
                log.error(
                    "alert journal %s: %d bytes from byte %d unreadable (%s); "
                    "replaying the %d entries before them",
                    self.path,
                    len(data) - start,
                    start,
                    str(err)[:120],
                    len(entries),
                )
                break
            entries.append(entry)
            start = end + 1
        return entries

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)  # O_APPEND: at the end, whatever the offset
            view = view[written:]
        if self.fsync:
            os.fdatasync(self.fd)
        self.size += len(data)

    def empty(self) -> None:
        if self.size and self.fd >= 0:
            os.ftruncate(self.fd, 0)
            self.size = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # and with it the lock
            self.fd = -1
