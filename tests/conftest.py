import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def compose_recipe(*overrides):
    """Compose and validate like the CLI does; returns the RecipeConfig."""
    from neuralchat_recipes.compose import compose
    from neuralchat_recipes.config import build_recipe

    return build_recipe(compose(list(overrides)))


def plan_for(*overrides):
    from neuralchat_recipes.plan import build_plan

    return build_plan(compose_recipe(*overrides))


@pytest.fixture
def plan_of():
    return plan_for


@pytest.fixture
def recipe_of():
    return compose_recipe
