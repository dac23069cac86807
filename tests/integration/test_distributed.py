"""Stages launched in several CPU processes (gloo): torchrun DDP, DeepSpeed ZeRO-2/3, and a rank that crashes."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

TWO_RANKS = ("hardware.devices_per_node=2", "hardware.launcher=torchrun", "hardware.ddp_backend=gloo")


def _env(**extra):
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def _manifest(root: Path, kind: str) -> dict:
    return json.loads((next(root.glob(f"artifacts/{kind}-*")) / "manifest.json").read_text())


def _losses(manifest: dict) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in manifest["metrics"]["history"] if "loss" in h}


def _has_mpirun() -> bool:
    import shutil

    return shutil.which("mpirun", path=_env()["PATH"]) is not None


MPIRUN = ("hardware.devices_per_node=2", "hardware.launcher=mpirun", "hardware.ddp_backend=gloo")


@pytest.mark.parametrize("launcher", ["torchrun", "mpirun"])
def test_two_processes_follow_the_loss_curve_of_one_with_the_same_global_batch(tmp_path, launcher):
    if launcher == "mpirun" and not _has_mpirun():
        pytest.skip("no mpirun on PATH (pip install mpich, part of the dev extra on Linux x86-64)")
    common = ("recipe=tiny", "pipeline=[sft]", "sft.max_steps=30", "sft.logging_steps=5")
    one = run_cli(*common, f"output_root={tmp_path / 'one'}")
    if launcher == "torchrun":
        ranks = (*TWO_RANKS, "hardware.master_port=29533")
    else:  # ITREX's Xeon launch (mpirun -f nodefile -n N -ppn P -genv OMP_NUM_THREADS=...), one node, gloo
        (tmp_path / "nodefile").write_text("localhost\n")
        ranks = (
            *MPIRUN,
            f"hardware.hostfile={tmp_path / 'nodefile'}",
            "hardware.omp_num_threads=1",
            "hardware.master_port=29537",
        )
    two = run_cli(*common, f"output_root={tmp_path / 'two'}", *ranks, env=_env())
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    if launcher == "torchrun":
        assert "launching: torchrun --nnodes 1 --nproc_per_node 2" in two.stderr
    else:
        assert (
            f"launching: mpirun -f {tmp_path / 'nodefile'} -n 2 -ppn 2 -genv OMP_NUM_THREADS=1 {sys.executable} "
            "-m neuralchat_recipes.worker"
        ) in two.stderr
    assert two.stderr.count("training samples from") == 1  # only rank 0 reports progress
    assert "[rank0] " in two.stderr and "[rank1] " in two.stderr  # every rank's output, prefixed
    m1, m2 = _manifest(tmp_path / "one", "sft"), _manifest(tmp_path / "two", "sft")
    a1, a2 = m1["args"], m2["args"]
    assert m2["launch"]["world_size"] == 2 and m1["launch"]["world_size"] == 1
    assert a1["per_device_train_batch_size"] * a1["gradient_accumulation_steps"] == 16
    assert a2["per_device_train_batch_size"] * a2["gradient_accumulation_steps"] * 2 == 16
    l1, l2 = _losses(m1), _losses(m2)
    assert sorted(l1) == sorted(l2) == [1, 5, 10, 15, 20, 25, 30]
    assert l1[30] < 0.5 * l1[1]  # it trained
    for step in l1:  # same samples per optimizer step, same seed: the curves agree to float noise
        assert l2[step] == pytest.approx(l1[step], rel=0.01), (step, l1, l2)
    assert (next((tmp_path / "two").glob("artifacts/sft-*")) / "adapter_model.safetensors").is_file()


# Loaded by every Python process of the test (via PYTHONPATH); acts only in rank 1 of the launched stage:
# once the process group is up, it waits a second into training and then fails on purpose.
CRASH_SITE = """
import os, signal, sys, threading, time
if (os.environ.get("RANK") or os.environ.get("PMI_RANK")) == "1" and os.environ.get("NCR_TEST_CRASH"):
    def _fail(*_):
        raise RuntimeError("injected failure on rank 1")
    signal.signal(signal.SIGUSR1, _fail)
    def _watch():
        while True:
            time.sleep(0.1)
            dist = sys.modules.get("torch.distributed")
            if dist is not None and dist.is_available() and dist.is_initialized():
                break
        time.sleep(3)
        with open(os.environ["NCR_TEST_CRASH_STAMP"], "w") as fh:
            fh.write(repr(time.time()))
        sig = signal.SIGUSR1 if os.environ["NCR_TEST_CRASH"] == "exception" else signal.SIGKILL
        os.kill(os.getpid(), sig)
    threading.Thread(target=_watch, daemon=True).start()
"""


@pytest.mark.parametrize("how, launcher", [("exception", "torchrun"), ("killed", "torchrun"), ("exception", "mpirun")])
def test_a_crashing_rank_fails_the_stage_within_seconds_and_publishes_nothing(tmp_path, how, launcher):
    if launcher == "mpirun" and not _has_mpirun():
        pytest.skip("no mpirun on PATH (pip install mpich, part of the dev extra on Linux x86-64)")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CRASH_SITE)
    stamp = tmp_path / "crashed-at"
    out = tmp_path / "out"
    env = _env(
        PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        NCR_TEST_CRASH=how,
        NCR_TEST_CRASH_STAMP=str(stamp),
    )
    if launcher == "torchrun":
        ranks = (*TWO_RANKS, f"hardware.master_port={29551 if how == 'exception' else 29553}")
    else:
        (tmp_path / "nodefile").write_text("localhost\n")
        ranks = (*MPIRUN, f"hardware.hostfile={tmp_path / 'nodefile'}", "hardware.master_port=29557")
    proc = run_cli(
        "recipe=tiny",
        "pipeline=[sft]",
        "sft.max_steps=3000",
        "sft.save_steps=1000000",
        f"output_root={out}",
        *ranks,
        env=env,
        timeout=600,
    )
    ended = time.time()
    tail = proc.stderr[-3000:]
    assert stamp.is_file(), tail  # the crash happened (during training)
    assert proc.returncode == 1, tail
    assert ended - float(stamp.read_text()) < 30, f"the stage did not fail promptly after the rank crashed:\n{tail}"
    assert f"error: stage sft failed under {launcher}" in proc.stderr, tail
    if how == "exception":
        assert "rank 1: RuntimeError: injected failure on rank 1" in proc.stderr, tail
        assert "[rank1] RuntimeError: injected failure on rank 1" in proc.stderr, tail  # its traceback, prefixed
    else:  # no Python error to report: the survivor's lost connection, with the hint that a peer died
        assert "died without a Python error" in proc.stderr, tail
    assert "Nothing was published" in proc.stderr, tail
    assert not list(out.glob("artifacts/sft-*"))  # no artifact, not even a partial one
    staging = next(out.glob("staging/sft-*"))
    assert not (staging / "result.json").exists()
    assert "step 3000/3000" not in proc.stderr


def _load_and_generate(model_dir: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    enc = tok("### User:\n2 + 3 =\n### Assistant:\n", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize(
    "zero, sft_config, port",
    [
        (2, "neural_chat_zero2", 29541),  # ITREX neural-chat ds_config: DeepSpeed AdamW eps 1e-6, WarmupDecayLR
        (3, "zero3", 29545),  # optimum-habana llama2_ds_zero3_config: weights sharded, gathered on save
    ],
)
def test_zero_sft_merge_dpo_pipeline_on_two_cpu_processes(tmp_path, zero, sft_config, port):
    pytest.importorskip("deepspeed")
    proc = run_cli(
        "recipe=tiny",
        "pipeline=[sft,merge,dpo,merge_dpo]",
        "sft.max_steps=30",
        "sft.logging_steps=5",
        "dpo.max_steps=8",
        "dpo.logging_steps=2",
        f"output_root={tmp_path}",
        *TWO_RANKS,
        f"hardware.master_port={port}",
        f"+deepspeed@sft.deepspeed={sft_config}",
        f"+deepspeed@dpo.deepspeed=zero{zero}",
        "sft.adam_epsilon=1e-6",
        env=_env(),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("launching: deepspeed --num_nodes 1 --num_gpus 2") == 2  # sft and dpo
    sft, dpo = _manifest(tmp_path, "sft"), _manifest(tmp_path, "dpo")
    for m in (sft, dpo):
        assert m["args"]["deepspeed"]["zero_optimization"]["stage"] == zero and m["launch"]["world_size"] == 2
        assert m["metrics"]["last_loss"] < m["metrics"]["first_loss"]
    if zero == 2:
        assert sft["args"]["deepspeed"]["optimizer"]["params"]["eps"] == 1e-6
    else:
        assert sft["args"]["deepspeed"]["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    from safetensors.torch import load_file

    for kind, rank in (("sft", 16), ("dpo", 8)):  # adapters saved whole, not as ZeRO-3 shards
        weights = load_file(next(tmp_path.glob(f"artifacts/{kind}-*")) / "adapter_model.safetensors")
        b = [w for k, w in weights.items() if "lora_B" in k]
        assert b and all(w.shape[1] == rank and w.shape[0] > 0 for w in b)
        assert any(float(w.abs().sum()) > 0 for w in b)
    final = Path(proc.stdout.split("final model:")[1].split()[0])
    assert final.parent == tmp_path / "artifacts" and final.name.startswith("merge-")
    assert isinstance(_load_and_generate(final), str)


def test_one_stage_on_two_processes_and_the_next_in_process(tmp_path):
    """Per-stage hardware, run for real: SFT under torchrun on 2 processes (the recipe's cpu profile, overridden for
    that stage), merge and DPO in this process; the checkpoint cadence the seeds ask for (save_strategy epoch)."""
    stage_ranks = [f"sft.{key}" for key in TWO_RANKS] + ["sft.hardware.master_port=29549"]
    proc = run_cli(
        "recipe=tiny",
        "pipeline=[sft,merge,dpo]",
        "sft.max_steps=null",
        "sft.num_train_epochs=1",
        "sft.global_batch_size=30",
        "sft.save_strategy=epoch",
        "dpo.max_steps=4",
        f"output_root={tmp_path}",
        *stage_ranks,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launching: torchrun --nnodes 1 --nproc_per_node 2" in proc.stderr
    assert proc.stderr.count("launching:") == 1  # merge and DPO ran in this process
    sft, dpo = _manifest(tmp_path, "sft"), _manifest(tmp_path, "dpo")
    assert sft["launch"]["world_size"] == 2 and dpo["launch"]["world_size"] == 1
    assert sft["metrics"]["steps"] == 10  # 300 rows / 30 a step: one epoch
    assert sft["args"]["save_strategy"] == "epoch"
