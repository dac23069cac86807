"""The sweep table from job records (no training), and the launcher / sweeper configs we ship."""

import json
from pathlib import Path

import yaml

from neuralchat_recipes.sweep import final_metrics, objective, write_table
from tests.conftest import compose_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _summary(loss, exact):
    """A run record (summary.json) as the runner writes it: each stage's StageResult.record()."""

    def stage(name, kind, metrics):
        return {
            "name": name,
            "kind": kind,
            "status": "ran",
            "wall_time_s": 1.0,
            "output_dir": f"/a/{name}",
            "tokens_seen": None,
            "global_batch_size": None,
            "metrics": metrics,
        }

    return {
        "final_model": "/m",
        "run_dir": "/r",
        "stages": [
            stage("sft", "sft", {"first_loss": 5.0, "last_loss": loss}),
            stage(
                "eval",
                "eval",
                {"results": {"base": {"exact_match": 0.0}, "final": {"exact_match": exact, "examples": 100}}},
            ),
        ],
    }


def test_final_metrics_take_the_evaluated_model_not_the_compared_ones():
    row = final_metrics(_summary(0.5, 0.9))
    assert row["sft.last_loss"] == 0.5 and row["eval.exact_match"] == 0.9 and "eval.examples" not in row
    assert objective(_summary(0.5, 0.9), "eval.exact_match") == 0.9


def test_unknown_objective_names_the_choices():
    import pytest

    from neuralchat_recipes.config import ConfigError

    with pytest.raises(ConfigError, match="eval.exact_match"):
        objective(_summary(0.5, 0.9), "eval.accuracy")


def test_table_lists_swept_keys_status_and_metrics(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for num, (r, loss, exact) in enumerate([(4, 0.6, 0.8), (8, 0.5, 0.9)]):
        (jobs / f"{num}.json").write_text(
            json.dumps(
                {
                    "job": num,
                    "overrides": ["recipe=tiny", f"sft.peft.r={r}"],
                    "status": "ok",
                    "error": None,
                    "stages_ran": 5,
                    "stages_cached": 0,
                    "metrics": final_metrics(_summary(loss, exact)),
                }
            )
        )
    (jobs / "2.json").write_text(
        json.dumps(
            {
                "job": 2,
                "overrides": ["recipe=tiny", "sft.peft.r=16"],
                "status": "failed",
                "error": "exit 1",
                "stages_ran": 0,
                "stages_cached": 0,
                "metrics": {},
            }
        )
    )
    out = write_table(tmp_path)
    md = out["md"].read_text()
    assert "# Sweep: sft.peft.r" in md and "`recipe=tiny`" in md
    assert "| 0 | 4 | ok | 5 | 0 | 0.6 | 0.8 |" in md and "| 2 | 16 | failed: exit 1 |" in md
    assert out["csv"].read_text().splitlines()[0].startswith("job,recipe,sft.peft.r,status")
    assert "png" not in out  # a failed job has no metrics: nothing to plot for every point


def test_launcher_and_sweeper_configs_name_real_plugins_and_recipe_keys():
    local = yaml.safe_load((RECIPES / "hydra/launcher/local_parallel.yaml").read_text())
    slurm = yaml.safe_load((RECIPES / "hydra/launcher/slurm.yaml").read_text())
    search = yaml.safe_load((RECIPES / "hydra/sweeper/lora_search.yaml").read_text())
    assert (
        local["defaults"] == ["joblib"] and slurm["defaults"] == ["submitit_slurm"] and search["defaults"] == ["optuna"]
    )
    # every searched key is a key of the recipe (one point of each range composes and validates)
    recipe = compose_recipe(
        "recipe=tiny", "sft.peft.r=16", "sft.learning_rate=1e-3", "sweep_objective=eval.exact_match"
    )
    assert set(search["params"]) == {"sft.peft.r", "sft.learning_rate"}
    assert recipe.stages["sft"].peft.r == 16 and recipe.sweep_objective == "eval.exact_match"


def test_sweep_png_is_a_readable_grid_led_by_the_objective_and_the_eval_scores(tmp_path):
    from PIL import Image

    from neuralchat_recipes.sweep import MAX_PANELS, plotted_metrics

    metrics = {f"sft.m{i}": float(i) for i in range(8)} | {"eval.exact_match": 0.5, "eval.stop_rate": 1.0}
    rows = [{**metrics, "sft.peft.r": r} for r in ("4", "8", "16")]
    keys = list(metrics)
    assert plotted_metrics(keys, rows)[:2] == ["eval.exact_match", "eval.stop_rate"]
    assert plotted_metrics(keys, rows, objective="sft.m3")[:3] == ["sft.m3", "eval.exact_match", "eval.stop_rate"]
    assert len(plotted_metrics(keys, rows)) == MAX_PANELS
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for num, r in enumerate((4, 8, 16)):
        record = {"job": num, "overrides": [f"sft.peft.r={r}"], "status": "ok", "error": None}
        (jobs / f"{num}.json").write_text(
            json.dumps({**record, "stages_ran": 1, "stages_cached": 0, "metrics": metrics})
        )
    out = write_table(tmp_path)
    with Image.open(out["png"]) as image:
        width, height = image.size
    # nine panels as a 3 x 3 grid: neither a 4000-pixel strip nor cut to six
    assert 1200 <= width <= 2000 and 1000 <= height <= 1500, (width, height)


def test_the_number_of_jobs_is_counted_from_the_sweep_overrides():
    from neuralchat_recipes.sweep import count_jobs

    assert count_jobs(["recipe=tiny", "sft.peft.r=4,8,16", "dpo.beta=0.1,0.2"]) == 6
    assert count_jobs(["sft.peft.r=range(4,16,4)"]) == 3
    assert count_jobs(["recipe=tiny"]) == 1
    assert count_jobs(["hydra/sweeper=lora_search", "sft.peft.r=4,8"]) is None  # the search decides its trials
