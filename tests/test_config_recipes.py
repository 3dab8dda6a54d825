"""Every recipe of docs/configuration.md is a config the gateway accepts: the docs cannot rot."""

from __future__ import annotations

import re
import tomllib

import pytest

from gateway.config import parse_config
from tests.conftest import ROOT

DOC = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
RECIPES = DOC[DOC.index("\n## Recipes\n") :]
RECIPES = RECIPES[: RECIPES.find("\n## ", 1) if "\n## " in RECIPES[1:] else len(RECIPES)]


def recipe_blocks() -> list[tuple[str, str]]:
    """(recipe title, TOML text) for each ```toml block under ## Recipes."""
    blocks = []
    for section in re.split(r"\n### ", RECIPES)[1:]:
        title = section.splitlines()[0]
        for n, block in enumerate(re.findall(r"```toml\n(.*?)```", section, re.S)):
            blocks.append((f"{title} [{n}]", block))
    return blocks


BLOCKS = recipe_blocks()


def placeholder(name: str) -> str:
    """A value of the right shape for an environment variable a recipe names."""
    if "TELEGRAM" in name and "TOKEN" in name:
        return "123456789:" + "A" * 35
    return "placeholder-secret-value-1234567890"


def test_the_recipes_are_found() -> None:
    titles = " | ".join(title for title, _ in BLOCKS)
    for recipe in ("away", "escalates to a neighbour", "Night mode by schedule", "Muting a zone"):
        assert recipe in titles
    assert len(BLOCKS) >= 12


@pytest.mark.parametrize(("title", "text"), BLOCKS, ids=[title for title, _ in BLOCKS])
def test_each_recipe_loads(title: str, text: str) -> None:
    env = {name: placeholder(name) for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)}
    config = parse_config(tomllib.loads(text), env, f"docs/configuration.md: {title}")
    assert config.sensors or config.rules or config.telegram or config.gateway
