"""Two jobs that share an upstream stage compute it once: the second waits on the lock."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_two_beta_jobs_train_sft_once(tmp_path):
    root = tmp_path / "out"
    common = ["recipe=tiny", "pipeline=[sft,merge,dpo]", "sft.max_steps=120", "dpo.max_steps=5", f"output_root={root}"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "neuralchat_recipes", *common, f"dpo.beta={beta}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for beta in (0.1, 0.3)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    stderr = [o[1] for o in outs]
    assert sum("[sft] running sft stage" in e for e in stderr) == 1
    assert sum("[sft] skipped" in e for e in stderr) == 1
    assert len(list((root / "artifacts").glob("sft-*"))) == 1
    assert len(list((root / "artifacts").glob("dpo-*"))) == 2
