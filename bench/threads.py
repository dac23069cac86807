"""Threads against SFT throughput on this CPU, on a quiet host and on one busy with other work.

    python bench/threads.py [--work DIR] [--threads 1,2,4]

Where the cpu profile's thread rule comes from (backends/threads.py). Each cell is one SFT run in its own
process with ``hardware.omp_num_threads=N`` (torch's intra-op threads inside the stage): the tiny demo's own
SFT stage (``recipe=tiny pipeline=[sft]``, 150k parameters) and run_all.py's SFT workload on the 20.3M bench
model. "shared" runs the same with one busy process per core beside it (what a second sweep job, a second
rank or someone else's work does to the stage). Throughput is non-pad tokens per second of the training loop.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_all import bench_env, measure, ours  # noqa: E402
from workload import build_model, write_sft  # noqa: E402

from neuralchat_recipes.backends.threads import physical_cores  # noqa: E402


def _spin() -> None:
    while True:
        pass


def tiny_demo(work: Path, env, threads: int) -> dict:
    root = work / f"tiny-{threads}"
    cmd = [sys.executable, "-m", "neuralchat_recipes", "pipeline=[sft]", f"hardware.omp_num_threads={threads}"]
    measure([*cmd, "sft.max_steps=200", f"output_root={root}"], env)
    return json.loads(next((root / "artifacts").glob("sft-*/manifest.json")).read_text())["metrics"]


def bench_model(work: Path, env, threads: int) -> dict:
    run = work / f"bench-{threads}"
    run.mkdir(parents=True, exist_ok=True)
    for name in ("model", "sft.jsonl"):
        if not (run / name).exists():
            (run / name).symlink_to(work / name)
    return ours("sft", run, env, extra=[f"hardware.omp_num_threads={threads}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a new temporary one)")
    parser.add_argument("--threads", default="1,2,4", help="thread counts to try")
    parser.add_argument("--samples", type=int, default=32, help="SFT conversations of the bench model's runs")
    a = parser.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="ncr-threads-"))
    work.mkdir(parents=True, exist_ok=True)
    env = bench_env(work)
    build_model(work / "model")
    write_sft(work / "sft.jsonl", n=a.samples, median=300)
    counts = [int(t) for t in a.threads.split(",")]
    cores = physical_cores()
    print(f"{cores} physical cores here; tokens/s of SFT by torch threads\n")
    print("| workload | host | " + " | ".join(f"{t} thread{'s' * (t > 1)}" for t in counts) + " |")
    print("|---|---|" + "---|" * len(counts))
    for label, run in (("tiny demo, 0.15M", tiny_demo), ("bench model, 20.3M", bench_model)):
        for host in ("quiet", "shared"):
            busy = cores if host == "shared" else 0
            spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(busy)]
            for p in spinners:
                p.start()
            try:
                rates = []
                for t in counts:
                    metrics = run(work / host, env, t) if run is tiny_demo else run(work, env, t)
                    rates.append(metrics["tokens_seen"] / metrics["train_runtime_s"])
            finally:
                for p in spinners:
                    p.terminate()
            print(f"| {label} | {host} | " + " | ".join(f"{r:,.0f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
