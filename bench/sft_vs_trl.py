"""Our SFT stage vs plain TRL doing the same work, measured in one run, reported as ratios.

    python bench/sft_vs_trl.py [--steps 200]

Both sides train the builtin tiny Llama with the same LoRA adapter, data (the bundled demo
SFT rows rendered with the neural-chat template, prompt tokens masked), batch, schedule and
precision; each runs in its own process so peak memory is its own. Reported: wall time of
the whole process (imports, data, training, saving) and of training alone, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PLAIN_TRL = r"""
import json, sys, time
t0 = time.time()
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
from neuralchat_recipes.data.loading import load_rows
from neuralchat_recipes.data.tokenize import tokenize_sft
from neuralchat_recipes.compose import compose
from neuralchat_recipes.config import build_recipe
from neuralchat_recipes.tiny_model import resolve_builtin
steps, out = int(sys.argv[1]), sys.argv[2]
stage = build_recipe(compose(["recipe=tiny"])).stages["sft"]
path = resolve_builtin("builtin:tiny-llama")
tok = AutoTokenizer.from_pretrained(path)
rows, _ = load_rows(stage.dataset, "sft")
ds = Dataset.from_list(tokenize_sft(rows, tok, "neural_chat", stage.max_seq_length, None, "assistant"))
model = AutoModelForCausalLM.from_pretrained(path)
cfg = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=stage.micro_batch_size,
                learning_rate=stage.learning_rate, lr_scheduler_type=stage.lr_scheduler_type,
                warmup_steps=stage.warmup_ratio, bf16=False, gradient_checkpointing=False, use_cpu=True,
                max_length=stage.max_seq_length, report_to=[], save_steps=stage.save_steps,
                logging_steps=stage.logging_steps,
                seed=stage.seed, data_seed=stage.seed, disable_tqdm=True, dataset_num_proc=None)
peft = LoraConfig(r=stage.peft.r, lora_alpha=stage.peft.alpha, lora_dropout=stage.peft.dropout,
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                  task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft)
t1 = time.time()
trainer.train()
t2 = time.time()
trainer.save_model(out + "/final")
print(json.dumps({"train_s": t2 - t1, "total_s": time.time() - t0}))
"""


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB of that process, its stdout)."""
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.time() - t0
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(err.read()[-3000:])
        return wall, usage.ru_maxrss / 1024, out.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-sft-")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NEURALCHAT_CACHE": os.path.join(work, "cache")}
    # build the tiny model once so neither side pays for it
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from neuralchat_recipes.tiny_model import resolve_builtin as r; r('builtin:tiny-llama')",
        ],
        env=env,
        check=True,
    )
    trl_wall, trl_rss, trl_out = measure(
        [sys.executable, "-c", PLAIN_TRL, str(args.steps), os.path.join(work, "trl")], env
    )
    ours_wall, ours_rss, _ = measure(
        [
            sys.executable,
            "-m",
            "neuralchat_recipes",
            "recipe=tiny",
            "pipeline=[sft]",
            f"sft.max_steps={args.steps}",
            f"output_root={os.path.join(work, 'ours')}",
        ],
        env,
    )
    manifest_dir = next(p for p in os.scandir(os.path.join(work, "ours", "artifacts")))
    with open(os.path.join(manifest_dir.path, "manifest.json")) as fh:
        ours_stage = json.load(fh)["wall_time_s"]
    trl = json.loads(trl_out.strip().splitlines()[-1])
    print(f"tiny SFT, {args.steps} steps, CPU; ratio = neuralchat / plain TRL")
    print(f"{'':28}{'plain TRL':>12}{'neuralchat':>12}{'ratio':>8}")
    print(f"{'process wall time (s)':28}{trl_wall:12.1f}{ours_wall:12.1f}{ours_wall / trl_wall:8.2f}")
    print(f"{'stage vs train+save (s)':28}{trl['total_s']:12.1f}{ours_stage:12.1f}{ours_stage / trl['total_s']:8.2f}")
    print(f"{'peak RSS (MiB)':28}{trl_rss:12.0f}{ours_rss:12.0f}{ours_rss / trl_rss:8.2f}")


if __name__ == "__main__":
    main()
