"""A non-editable install ships the recipe tree and the schemas, and plans from any directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_install_plans_from_another_directory(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)], check=True, timeout=600
    )
    wheel = next(wheels.glob("neuralchat_recipes-*.whl"))
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        timeout=600,
    )
    assert (site / "neuralchat_recipes" / "_recipes" / "recipe" / "neural_chat_v3.yaml").is_file()
    assert (site / "neuralchat_recipes" / "_schemas" / "recipe.schema.json").is_file()
    assert (site / "neuralchat_recipes" / "assets" / "tiny_arith_sft.jsonl").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import neuralchat_recipes, sys; print(neuralchat_recipes.__file__); "
            "from neuralchat_recipes.cli import main; main(['mode=plan', 'recipe=neural_chat_v3', 'hardware=gaudi2_8x'])",  # noqa: E501
        ],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    first, _, rest = proc.stdout.partition("\n")
    assert first.startswith(str(site))
    plan = json.loads(rest)
    assert plan["recipe"] == "neural_chat_v3" and plan["world_size"] == 8
    script = site / "bin" / "neuralchat-recipes"
    proc = subprocess.run(
        [sys.executable, str(script), "mode=validate", "recipe=tiny"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("OK: recipe tiny"), proc.stderr
