"""The planner's memory estimate (neuralchat_recipes/memory.py) against the peak memory a stage really takes.

    python bench/memory.py [--only NAME,NAME]

Each configuration runs the real CLI (`mode=run`, a few optimizer steps, fp32 on this CPU) in its own process;
its peak RSS (the largest process of the tree: the stage's) is compared with the estimate `mode=plan` printed for
the same command. The data is long enough that every batch is as wide as the stage's maximum length (the
estimate is for the widest batch), so what is compared is the model of memory, not the data's length tail.
Writes a Markdown table to bench/memory_last_run.md (and prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workload import _text, build_model, link_smollm2  # noqa: E402

STEPS = 3


def write_long_sft(path: Path, n: int = 48, tokens: int = 1100, seed: int = 0) -> Path:
    """Conversations longer than the stage's maximum length (truncated to it): every batch is full width."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            user = tokens // 5
            messages = [
                {"role": "user", "content": _text(rng, user)},
                {"role": "assistant", "content": _text(rng, tokens - user)},
            ]
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


def write_long_dpo(path: Path, n: int = 48, seed: int = 0) -> Path:
    """Pairs whose prompt + answer exceed the stage's max_length (prompt 300 tokens, answers 800)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            row = {"system": "", "question": _text(rng, 300), "chosen": _text(rng, 800), "rejected": _text(rng, 800)}
            fh.write(json.dumps(row) + "\n")
    return path


def configurations(work: Path) -> dict[str, list[str]]:
    """name -> CLI overrides. Each is a short training stage on this machine's cpu profile, fp32."""
    bench_model = ["model.path=" + str(work / "model"), "model.revision=null", "model.params_billion=null"]
    smol = ["model.path=" + str(work / "smollm2"), "model.revision=null", "model.params_billion=null"]
    common = ["recipe=tiny", "hardware.precision=fp32"]

    def sft(*extra: str, data: str = "sft.jsonl", length: int = 1024, batch: int = 8) -> list[str]:
        return [
            *common,
            "pipeline=[sft]",
            f"sft.dataset.path={work / data}",
            "sft.dataset.format=messages",
            f"sft.max_seq_length={length}",
            f"sft.global_batch_size={batch}",
            f"sft.micro_batch_size={batch}",
            "sft.num_train_epochs=null",
            f"sft.max_steps={STEPS}",
            "sft.save_steps=100000",
            "sft.do_eval=false",
            "sft.template=neural_chat",
            *(
                []
                if "peft@sft.peft=none" in extra
                else ["sft.peft.r=16", "sft.peft.target_modules=[q_proj,k_proj,v_proj,o_proj]"]
            ),
            *extra,
        ]

    def dpo(*extra: str) -> list[str]:
        return [
            *common,
            "pipeline=[dpo]",
            "dpo.input=base",
            *bench_model,
            f"dpo.dataset.path={work / 'dpo.jsonl'}",
            "dpo.max_length=1024",
            "dpo.max_prompt_length=256",
            "dpo.global_batch_size=4",
            "dpo.micro_batch_size=4",
            "dpo.num_train_epochs=null",
            f"dpo.max_steps={STEPS}",
            "dpo.save_steps=100000",
            "dpo.do_eval=false",
            *extra,
        ]

    return {
        "tiny SFT (builtin model, packed 512)": [
            *common,
            "pipeline=[sft]",
            "sft.num_train_epochs=null",
            f"sft.max_steps={STEPS}",
            "sft.do_eval=false",
        ],
        "20M SFT padded": sft(*bench_model, "sft.packing=false"),
        "20M SFT padded, checkpointing": sft(*bench_model, "sft.packing=false", "sft.gradient_checkpointing=true"),
        "20M SFT packed": sft(*bench_model, "sft.packing=true"),
        "20M SFT packed, full fine-tuning": sft(*bench_model, "sft.packing=true", "peft@sft.peft=none"),
        "20M SFT packed, QLoRA nf4": sft(*bench_model, "sft.packing=true", "sft.peft.quantization=nf4"),
        "20M DPO LoRA, reference = adapter off": dpo("dpo.precompute_ref_log_probs=false"),
        "20M DPO LoRA, reference precomputed": dpo("dpo.precompute_ref_log_probs=true"),
        "20M DPO full, reference = copy": dpo("peft@dpo.peft=none", "dpo.precompute_ref_log_probs=false"),
        # (SmolLM2's BPE splits the bench's words into ~5 tokens each: shorter conversations, the same width)
        "SmolLM2-135M SFT packed": sft(*smol, "sft.packing=true", data="sft_short.jsonl", length=1024, batch=2),
        # twice the tokens a micro batch: where the estimate let 8 x 1024 through to a run that did not fit 24 GB
        "SmolLM2-135M SFT packed, 4 x 1024": sft(
            *smol, "sft.packing=true", data="sft_short.jsonl", length=1024, batch=4
        ),
    }


def estimate_gib(overrides: list[str], root: Path, env) -> tuple[float, dict]:
    out = subprocess.run(
        [sys.executable, "-m", "neuralchat_recipes", "mode=plan", *overrides, f"output_root={root}"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    stage = json.loads(out)["stages"][-1]
    return stage["memory"]["peak_gib"], stage["memory"]["parts_gib"]


def measured_gib(overrides: list[str], root: Path, env) -> tuple[float, float]:
    """(peak RSS of the largest process in the run's tree, GiB; wall seconds)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "neuralchat_recipes", *overrides, f"output_root={root}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise SystemExit(f"run failed: {' '.join(overrides)}\n{log.read()[-3000:]}")
    return usage.ru_maxrss / 2**20, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "neuralchat-memory-bench")
    parser.add_argument("--only", default="", help="comma-separated substrings of configuration names")
    opts = parser.parse_args()
    work = opts.work
    work.mkdir(parents=True, exist_ok=True)
    build_model(work / "model")
    link_smollm2(work / "smollm2")
    write_long_sft(work / "sft.jsonl")
    write_long_sft(work / "sft_short.jsonl", tokens=300)
    write_long_dpo(work / "dpo.jsonl")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for name, overrides in configurations(work).items():
        if opts.only and not any(s in name for s in opts.only.split(",")):
            continue
        root = work / f"run-{time.time_ns()}"
        estimate, parts = estimate_gib(overrides, root, env)
        measured, wall = measured_gib(overrides, root, env)
        rows.append((name, estimate, measured, wall, parts))
        print(f"{name}: estimate {estimate:.2f} GiB, measured {measured:.2f} GiB ({estimate / measured - 1:+.0%})")
    import platform

    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores: `python bench/memory.py{' --only ' + opts.only if opts.only else ''}`",
        "",
        "| configuration | estimate (GiB) | measured peak RSS (GiB) | estimate / measured | biggest parts of the "
        "estimate (GiB) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, estimate, measured, _wall, parts in rows:
        top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:4])
        lines.append(f"| {name} | {estimate:.2f} | {measured:.2f} | {estimate / measured:.2f} | {top} |")
    within = sum(0.75 <= e / m <= 1.25 for _, e, m, _, _ in rows)
    lines += ["", f"{within} of {len(rows)} estimates within +-25% of the measurement."]
    text = "\n".join(lines) + "\n"
    (HERE / "memory_last_run.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
