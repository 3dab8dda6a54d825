"""Escalation: which of a rule's steps are due for an alert, and when the next one is.

Pure: `since` is when the alert was raised (or its silence ended), `fired` how many steps
(levels 1..fired, in order) already fired; the caller keeps both and the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from gateway.config import EscalationStep

__all__ = ["AlertState", "due_levels", "next_deadline"]

AlertState = Literal["active", "acknowledged", "cleared"]


def _open(state: AlertState, silenced: bool) -> bool:
    # Acknowledging or clearing stops the steps to come; a silence holds them.
    return state == "active" and not silenced


def due_levels(
    since: float,
    state: AlertState,
    silenced: bool,
    steps: Sequence[EscalationStep],
    fired: int,
    now: float,
) -> list[int]:
    """Levels (1-based) due now and not fired yet: each once, several if a restart let them pile up."""
    if not _open(state, silenced):
        return []
    return [level for level in range(fired + 1, len(steps) + 1) if now >= since + steps[level - 1].after]


def next_deadline(
    since: float, state: AlertState, silenced: bool, steps: Sequence[EscalationStep], fired: int
) -> float | None:
    """When the next step falls due (for a timer), or None when none will."""
    if not _open(state, silenced) or fired >= len(steps):
        return None
    return since + steps[fired].after
