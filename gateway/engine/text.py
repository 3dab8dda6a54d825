"""Text from outside (sensor values, chat messages): the characters it may not carry into ours."""

from __future__ import annotations

import re

__all__ = ["CONTROL_CHARACTERS"]

# C0 and C1 controls and the Unicode line breaks: from a value, a newline above all, they
# would start a forged line of their own, move a terminal's cursor or end a record.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
