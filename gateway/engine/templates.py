"""Templates: alert messages and action payloads, filled from a fixed list of fields.

No str.format: a template must not reach attributes such as `{rule.__class__}`. A value from
a sensor is hostile: it can neither add a line to a message nor a key to a JSON payload.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from gateway.config import Rule, Sensor
from gateway.engine.display import display
from gateway.engine.formats import Value
from gateway.engine.text import CONTROL_CHARACTERS, compact_json

__all__ = ["fill", "fill_payload", "render_message"]

_PLACEHOLDER = re.compile(r"\{([a-z_]+(?:\.[a-z_]+)?)\}")


def render_message(
    template: str, rule: Rule, sensor: Sensor, value: Value | None, site: str, shown: str | None = None
) -> str:
    """Fill `{sensor.name}`-style placeholders from a fixed list; anything else stays as written.

    `shown`: the value's display (gateway.engine.display), when the caller has it already."""
    fields = {
        "sensor.id": sensor.id,
        "sensor.name": sensor.name,
        "sensor.zone": sensor.zone,
        "rule.id": rule.id,
        "rule.severity": rule.severity,
        "value": "" if value is None else str(value).lower() if isinstance(value, bool) else str(value),
        "display": display(value, sensor) if shown is None else shown,
        "site": site,
    }
    return fill(template, fields)


def fill(template: str, fields: dict[str, str]) -> str:
    """Plain text: each known placeholder replaced by its text, without control characters."""
    parts = _parts(template)
    if len(parts) == 1:
        return template
    out: list[str] = []
    for literal, name in parts:
        out.append(literal)
        if name is not None:
            out.append(CONTROL_CHARACTERS.sub("", fields[name]) if name in fields else f"{{{name}}}")
    return "".join(out)


@functools.lru_cache(maxsize=4096)  # the config's templates: parsed once, not at every alert
def _parts(template: str) -> tuple[tuple[str, str | None], ...]:
    """The text before each placeholder and its name; the text after the last one, with None."""
    parts: list[tuple[str, str | None]] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        parts.append((template[pos : match.start()], match.group(1)))
        pos = match.end()
    parts.append((template[pos:], None))
    return tuple(parts)


def fill_payload(template: str, alert: dict[str, Any]) -> str:
    """An action's payload: `{alert.<key>}` and `{alert}` filled so that no value can rewrite it.

    A template that is JSON with its placeholders in it (`{"state":"OFF","why":"{alert.message}"}`,
    `{"value": {alert.value}}`) gets JSON: inside a string a value is escaped, elsewhere it is
    the JSON value (numbers as numbers, `null`). Any other template is text (see `fill`).
    """
    values: dict[str, Any] = {f"alert.{k}": v for k, v in alert.items()}
    values["alert"] = alert
    pieces = _json_template(template)
    if pieces is None:
        return fill(template, {name: _text(value) for name, value in values.items()})
    out = []
    for literal, name, quoted in pieces:
        out.append(literal)
        if name is None:
            continue
        if name not in values:
            out.append("{" + name + "}")
        elif quoted:
            out.append(json.dumps(_text(values[name]))[1:-1])
        else:
            out.append(compact_json(values[name]))
    return "".join(out)


def _text(value: Any) -> str:
    """A value as text, as the alert's JSON spells it: true/false, no "None"; `{alert}` as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return compact_json(value)
    return str(value)


@functools.lru_cache(maxsize=256)
def _json_template(template: str) -> tuple[tuple[str, str | None, bool], ...] | None:
    """(literal, placeholder, inside a JSON string) pieces of a JSON template; None for text."""
    pieces: list[tuple[str, str | None, bool]] = []
    probe: list[str] = []
    start, in_string, escaped, scanned = 0, False, False, 0
    for m in _PLACEHOLDER.finditer(template):
        for ch in template[scanned : m.start()]:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = in_string
            elif ch == '"':
                in_string = not in_string
        scanned = m.end()
        literal = template[start : m.start()]
        pieces.append((literal, m.group(1), in_string))
        probe += [literal, "x" if in_string else "0"]
        start = m.end()
    pieces.append((template[start:], None, False))
    probe.append(template[start:])
    try:
        doc = json.loads("".join(probe))
    except ValueError:
        return None
    return tuple(pieces) if isinstance(doc, dict | list) else None
