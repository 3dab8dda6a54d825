"""Text from outside (sensor values, chat messages): the characters it may not carry into ours."""

from __future__ import annotations

import json
import re

__all__ = ["CONTROL_CHARACTERS", "compact_json"]

# Ours: what every protocol is told, encoded once. json.dumps(x, separators=(",", ":")) builds an
# encoder for every call (half its cost); this one is built once.
compact_json = json.JSONEncoder(separators=(",", ":")).encode

# C0 and C1 controls and the Unicode line breaks: from a value, a newline above all, they
# would start a forged line of their own, move a terminal's cursor or end a record.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
