"""A stage killed with SIGKILL resumes from its last checkpoint and ends where an uninterrupted run ends."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

ARGS = ["recipe=tiny", "pipeline=[sft]", "sft.max_steps=240", "sft.save_steps=40", "sft.logging_steps=20"]


def adapter(root: Path):
    from safetensors.torch import load_file

    return load_file(str(next((root / "artifacts").glob("sft-*")) / "adapter_model.safetensors"))


def test_sigkill_mid_sft_resumes_to_the_same_weights(tmp_path):
    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuralchat_recipes", *ARGS, f"output_root={killed_root}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    deadline = time.time() + 300
    checkpoint = None
    while time.time() < deadline and proc.poll() is None:
        done = list(killed_root.glob("staging/sft-*/checkpoints/checkpoint-80/trainer_state.json"))
        if done:
            checkpoint = done[0]
            break
        time.sleep(0.02)
    assert checkpoint is not None, "no checkpoint appeared before the run ended"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_root / "artifacts").exists() or not list((killed_root / "artifacts").glob("sft-*"))

    resumed = run_cli(*ARGS, f"output_root={killed_root}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "checkpoint-" in resumed.stderr
    assert not [p for p in killed_root.glob("staging/sft-*") if p.is_dir()], "staging is cleaned up once published"

    clean = run_cli(*ARGS, f"output_root={clean_root}")
    assert clean.returncode == 0, clean.stderr[-3000:]
    a, b = adapter(killed_root), adapter(clean_root)
    assert a.keys() == b.keys() and len(a) > 0
    import torch

    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key
    # the reported curve spans the whole stage, the part before the kill included
    import json

    resumed_metrics, clean_metrics = (
        json.loads(next((root / "artifacts").glob("sft-*/manifest.json")).read_text())["metrics"]
        for root in (killed_root, clean_root)
    )
    assert resumed_metrics["first_loss"] == pytest.approx(clean_metrics["first_loss"])
    steps = [h["step"] for h in resumed_metrics["history"] if "loss" in h]
    assert steps == [h["step"] for h in clean_metrics["history"] if "loss" in h] and steps[0] == 1


def test_sigterm_mid_sft_stops_cleanly_with_the_resume_hint_and_resumes(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuralchat_recipes", *ARGS, f"output_root={tmp_path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list(tmp_path.glob("staging/sft-*/checkpoints/checkpoint-40/trainer_state.json")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its first checkpoint"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "terminated: run the same command again to resume from the last checkpoint" in stderr
    assert "Traceback" not in stderr
    assert not list(tmp_path.glob("artifacts/sft-*")), "nothing is published by a stopped stage"
    resumed = run_cli(*ARGS, f"output_root={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "checkpoint-" in resumed.stderr
