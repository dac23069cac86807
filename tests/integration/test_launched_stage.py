"""A stage launched in several processes (torchrun, 2 CPU ranks over gloo) through the worker entry point."""

import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_sft_under_torchrun_with_two_cpu_processes(tmp_path):
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = run_cli("recipe=tiny", "pipeline=[sft]", "sft.max_steps=20", f"output_root={tmp_path}",
                   "hardware.devices_per_node=2", "hardware.launcher=torchrun", "hardware.ddp_backend=gloo",
                   "hardware.master_port=29533", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launching: torchrun --nnodes 1 --nproc_per_node 2" in proc.stderr
    assert proc.stderr.count("training samples from") == 1  # only rank 0 reports
    manifest = json.loads((next(tmp_path.glob("artifacts/sft-*")) / "manifest.json").read_text())
    assert manifest["launch"]["world_size"] == 2
    assert manifest["args"]["per_device_train_batch_size"] * manifest["args"]["gradient_accumulation_steps"] * 2 == 16
    assert manifest["metrics"]["last_loss"] < manifest["metrics"]["first_loss"]
    assert (next(tmp_path.glob("artifacts/sft-*")) / "adapter_model.safetensors").is_file()


def test_zero2_with_the_neural_chat_deepspeed_config_on_two_cpu_processes(tmp_path):
    """The DeepSpeed config the planner writes for neural-chat (ZeRO-2, AdamW eps 1e-6, WarmupDecayLR) trains."""
    pytest.importorskip("deepspeed")
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = run_cli("recipe=tiny", "pipeline=[sft]", "sft.max_steps=12", "sft.logging_steps=4", f"output_root={tmp_path}",
                   "hardware.devices_per_node=2", "hardware.launcher=torchrun", "hardware.ddp_backend=gloo",
                   "hardware.master_port=29541", "+deepspeed@sft.deepspeed=neural_chat_zero2", "sft.adam_epsilon=1e-6", env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launching: deepspeed --num_nodes 1 --num_gpus 2" in proc.stderr
    art = next(tmp_path.glob("artifacts/sft-*"))
    manifest = json.loads((art / "manifest.json").read_text())
    ds = manifest["args"]["deepspeed"]
    assert ds["zero_optimization"]["stage"] == 2 and ds["optimizer"]["params"]["eps"] == 1e-6
    assert manifest["metrics"]["last_loss"] < manifest["metrics"]["first_loss"]
    assert (art / "adapter_model.safetensors").is_file()
