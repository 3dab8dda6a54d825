"""Log lines: a value from outside cannot forge a line; a traceback keeps its lines."""

from __future__ import annotations

import logging

import pytest

from gateway.ops import logs

FORGED = "INFO gateway.alerts: alert zzz999 cleared: all clear"


def test_a_value_with_a_newline_stays_on_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.setup("INFO")
    try:
        logs.sensors.info("alert %s raised: %s", "abc234", f"Panel says x\n{FORGED}")
        logs.web.warning("refused %s", "a\r\n\x1b[2Jb\u2028c\x00")
        try:
            raise ValueError(f"kept as it is\n{FORGED}")
        except ValueError:
            logs.mqtt.exception("application for %s failed", "x\ny")
    finally:
        root.handlers[:], root.level = handlers, level
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"INFO gateway.sensors: alert abc234 raised: Panel says x\\n{FORGED}"
    assert lines[1] == "WARNING gateway.web: refused a\\r\\n\\x1b[2Jb\\u2028c\\x00"
    assert not any(line.startswith(FORGED) for line in lines)
    # The traceback keeps its lines, under a message that is one line, indented: an exception's
    # text cannot pass for a record either.
    assert lines[2] == "ERROR gateway.mqtt: application for x\\ny failed"
    assert lines[3] == "  Traceback (most recent call last):"
    assert lines[-2:] == ["  ValueError: kept as it is", f"  {FORGED}"]
