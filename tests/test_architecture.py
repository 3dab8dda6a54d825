"""The architecture's rules (docs/architecture.md), held by import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "protocols", "consumers")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_the_import_contracts_are_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("gateway/engine/rules.py", "import asyncio", "The engine is pure"),
        ("gateway/engine/rules.py", "import gateway.store.models", "The engine is pure"),
        ("protocols/mqtt/types.py", "import gateway.runtime", "Protocols know nothing of the gateway"),
        ("protocols/mqtt/types.py", "import protocols.telegram.types", "No protocol imports another"),
        ("consumers/site.py", "import protocols.mqtt.server", "Consumers use what an extender may use"),
        ("gateway/store/models.py", "import consumers.site", "Layers"),
    ],
)
def test_a_broken_rule_fails_the_check(tmp_path: Path, module: str, line: str, contract: str) -> None:
    """The contracts are live: one import against a rule, in a copy of the tree, breaks the check."""
    for name in (*PACKAGES, "pyproject.toml"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout
    broken = [part for part in result.stdout.split("Broken contracts")[-1].splitlines() if contract in part]
    assert broken, result.stdout


def test_the_engine_imports_only_the_standard_library_pydantic_and_the_config() -> None:
    graph = grimp.build_graph("gateway", include_external_packages=True)
    engine = graph.find_descendants("gateway.engine") | {"gateway.engine"}
    imported = {i for m in engine for i in graph.find_modules_directly_imported_by(m)}
    outside = {m.split(".")[0] for m in imported if not m.startswith("gateway.")}
    allowed = (set(sys.stdlib_module_names) - {"asyncio"}) | {"pydantic", "__future__"}
    assert outside <= allowed, sorted(outside - allowed)
    inside = {m for m in imported if m.startswith("gateway.") and not m.startswith("gateway.engine")}
    assert all(m == "gateway.config" or m.startswith("gateway.config.") for m in inside), sorted(inside)


def test_no_module_is_over_500_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts and (n := len(path.read_text().splitlines())) > 500
    }
    assert long == {}


def test_the_top_of_the_gateway_package_holds_at_most_12_modules() -> None:
    top = sorted(p.name for p in (ROOT / "gateway").glob("*.py"))
    assert len(top) <= 12, top
