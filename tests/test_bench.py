"""`bench/run.py --quick` as CI runs it: every section completes and loses nothing; timings are not judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(240)
def test_quick_benchmark_completes_without_loss(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=220,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["errors"] == [] and results["losses"] == []
    assert results["meta"]["quick"] is True
    # The alert storm ran on both gateways, every change told and stored.
    for subject in ("memory", "redis"):
        storm = results["subjects"][subject]["storm"]
        assert storm["changes"] == 500 and storm["lost"] == 0 and storm["stored_lost"] == 0, storm
