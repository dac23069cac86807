import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """The builtin tiny model is built once per test session, in a private cache."""
    if "NEURALCHAT_CACHE" not in os.environ:
        os.environ["NEURALCHAT_CACHE"] = str(tmp_path_factory.mktemp("neuralchat-cache"))
    yield


def compose_recipe(*overrides):
    """Compose and validate like the CLI does; returns the RecipeConfig."""
    from neuralchat_recipes.compose import compose
    from neuralchat_recipes.recipe import build_recipe

    return build_recipe(compose(list(overrides)))


def plan_for(*overrides):
    from neuralchat_recipes.plan import build_plan

    return build_plan(compose_recipe(*overrides))


def run_cli(*args, cwd=None, env=None, timeout=900):
    """Run `python -m neuralchat_recipes ARGS` as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "neuralchat_recipes", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


@pytest.fixture
def plan_of():
    return plan_for


@pytest.fixture
def recipe_of():
    return compose_recipe
