import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run where a CUDA device is (`pytest -m cuda` on a lent GPU machine: bench/gpu_check.sh)
    and are skipped elsewhere, saying why."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (bench/gpu_check.sh runs these where one is lent)")
    for item in marked:
        item.add_marker(skip)


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


def assert_trains_as_the_padded_run(free: dict, padded: dict, keys, pairs: bool = True) -> None:
    """A padding-free stage's manifest metrics against the same stage run padded: the unpadded path really ran
    (three steps of forward passes at least), a pair's prompt ran once for both answers (``pairs``), and each
    of the three logged steps agrees on ``keys``."""
    assert free["padding"].startswith("none") and padded["padding"].startswith("batches padded")
    assert free["unpadded_forwards"] >= 3 and "unpadded_forwards" not in padded
    if pairs:
        assert free["shared_prefix_tokens"] > 0, free
    free_steps, padded_steps = ([h for h in m["history"] if "loss" in h] for m in (free, padded))
    assert len(free_steps) == len(padded_steps) == 3
    for a, b in zip(free_steps, padded_steps):
        for key in keys:
            assert key in a, (key, sorted(a))
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (key, a, b)
