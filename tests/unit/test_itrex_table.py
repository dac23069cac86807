"""README's table of seed commands names recipe files that exist, and every seed recipe file is in it."""

import re
from pathlib import Path

from neuralchat_recipes.compose import group_options
from tests.fidelity_table import ROWS

README = Path(__file__).resolve().parents[2] / "README.md"


def _named_recipes() -> set[str]:
    text = README.read_text()
    table = text[text.index("| seed | command | `recipe=` |") :]
    table = table[: table.index("\n\n")]
    return {name for line in table.splitlines()[2:] for name in re.findall(r"`([\w/]+)`", line.split("|")[3])}


def test_the_readme_table_names_every_seed_recipe_and_nothing_else():
    named = _named_recipes()
    assert named <= set(group_options("recipe")), named - set(group_options("recipe"))
    assert named == {row.recipe for row in ROWS}, named ^ {row.recipe for row in ROWS}


def test_the_readme_counts_are_the_tables():
    text = README.read_text()
    assert f"{len(ROWS)} commands" in text
