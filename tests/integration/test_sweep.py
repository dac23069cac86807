"""Hydra multirun sweeps: one job per point, shared stages computed once, and the sweep table."""

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

SHORT = ("sft.max_steps=60", "dpo.max_steps=10")


def _sweep_dir(root: Path) -> Path:
    (sweep,) = list((root / "multirun").iterdir())
    return sweep


def _rows(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "sweep.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_a_lora_rank_sweep_runs_one_job_per_rank_and_writes_the_table(tmp_path):
    proc = run_cli("-m", "recipe=tiny", "sft.peft.r=4,8", *SHORT, f"output_root={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    rows = _rows(sweep)
    assert [r["sft.peft.r"] for r in rows] == ["4", "8"] and all(r["status"] == "ok" for r in rows)
    # a different SFT adapter changes everything after it: the jobs share no stage
    assert [r["stages_cached"] for r in rows] == ["0", "0"]
    ranks = sorted(json.loads((d / "manifest.json").read_text())["peft"]["r"] for d in tmp_path.glob("artifacts/sft-*"))
    assert ranks == [4, 8]
    assert len(list(tmp_path.glob("artifacts/dpo-*"))) == 2 and len(list(tmp_path.glob("artifacts/merge-*"))) == 4
    assert rows[0]["final_model"] != rows[1]["final_model"]
    for r in rows:  # final metrics of each job: losses, DPO rewards, the final model's scores
        assert float(r["sft.last_loss"]) > 0 and 0 <= float(r["eval.exact_match"]) <= 1
        assert r["dpo.reward_accuracy"] != "" and Path(r["final_model"]).is_dir()
    md = (sweep / "sweep.md").read_text()
    assert "# Sweep: sft.peft.r" in md and "| 0 | 4 | ok |" in md and "| 1 | 8 | ok |" in md
    assert "`recipe=tiny`" in md  # the overrides every job shares
    assert (sweep / "sweep.png").stat().st_size > 5000
    assert f"sweep table: {sweep.resolve() / 'sweep.md'}" in proc.stdout  # absolute, like every other path
    assert "sweep job 1/2: sft.peft.r=4" in proc.stderr and "sweep job 2/2: sft.peft.r=8" in proc.stderr
    assert not [d for d in sweep.iterdir() if d.is_dir() and d.name.isdigit()], "no empty per-job folders"


def test_a_dpo_beta_sweep_with_parallel_local_jobs_trains_sft_once(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    proc = run_cli(
        "-m",
        "hydra/launcher=local_parallel",
        "recipe=tiny",
        "pipeline=[sft,merge,dpo]",
        "dpo.beta=0.1,0.2",
        *SHORT,
        f"output_root={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(tmp_path.glob("artifacts/sft-*"))) == 1  # computed by one job, waited for / reused by the other
    assert len(list(tmp_path.glob("artifacts/dpo-*"))) == 2
    rows = _rows(_sweep_dir(tmp_path))
    assert [r["dpo.beta"] for r in rows] == ["0.1", "0.2"]
    # sft and merge ran once between the two jobs (whichever took each lock first), dpo in each
    assert sum(int(r["stages_ran"]) for r in rows) == 4 and sum(int(r["stages_cached"]) for r in rows) == 2
    assert rows[0]["sft.last_loss"] == rows[1]["sft.last_loss"]
