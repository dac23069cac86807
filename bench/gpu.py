"""LoRA SFT on a CUDA card: each packed-attention kernel's tokens per second and MFU (model FLOPs utilization
against the card's dense bf16 peak), on the bench model and at SmolLM2-135M's shape, in one run sized to a lent
GPU's minutes.

    python bench/gpu.py [--samples 512] [--shapes bench20m,smollm2] [--kernels sdpa,torch_varlen,flex,flash_varlen]
                        [--device cuda|cpu] [--out bench/gpu_last_run.md]

Each row is this project's SFT stage through its CLI (hardware=gpu_1x: bf16, packing into 1024-token blocks, LoRA
r16 on q/k/v/o, global batch 8, one epoch), with ``hardware.packed_attention`` set to the kernel; a kernel that
cannot run on this card (flash-attention not installed, say) gets a row saying why. Rate: trained (non-pad) tokens
over the training loop (the manifest's ``train_runtime_s``, which includes FlexAttention's compilation on its first
batches). Work: bench/limit.py's FLOPs per token (frozen linears 4N, LoRA 6r(d_in+d_out), causal attention within
each sample, the LM head on labelled tokens). MFU divides it by the card's published dense bf16 peak (by its name;
an unknown card gets the measured 8192^3 bf16 matmul rate instead, and the header says so); the measured rate is
printed too. SmolLM2's shape is a randomly initialised Llama of its config (the weights do not change the work,
and the GGUF is larger than what travels to a lent machine).

``--device cpu`` runs the same rows on this machine's CPU (fp32, the sdpa kernel) to try the script.
On a lent machine the project's missing dependencies travel as wheels: bench/gpu_wheels.sh.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from limit import Shape, sft_flops  # noqa: E402
from run_all import LORA_TARGETS, Failed, bench_env, ours, workload_flops  # noqa: E402
from workload import build_model, write_dpo, write_sft  # noqa: E402

# dense bf16 tensor-core peaks from the vendors' datasheets (without sparsity), TFLOP/s
BF16_PEAK_TFLOPS = {
    "H100 80GB HBM3": 989.4,  # SXM5
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.4,
    "A100-SXM4": 312.0,
    "A100-PCIE": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}


def card_peak() -> tuple[str, float | None, float]:
    """(the card's name, its datasheet bf16 peak in TFLOP/s or None, a measured 8192^3 bf16 matmul's rate)."""
    import torch

    name = torch.cuda.get_device_name()
    listed = next((tflops for key, tflops in BF16_PEAK_TFLOPS.items() if key in name), None)
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    measured = 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12
    return name, listed, measured


def cannot_run(kernel: str) -> str | None:
    """Why a kernel cannot run LoRA SFT in bf16 on this CUDA card (None: it can)."""
    import torch

    from neuralchat_recipes.data.packed_attention import kernel_problem

    return kernel_problem(kernel, "cuda", torch.bfloat16, False)  # (the Llama models' attention has no dropout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=512, help="SFT conversations (median ~300 tokens)")
    parser.add_argument("--shapes", default="bench20m,smollm2")
    parser.add_argument("--kernels", default="sdpa,torch_varlen,flex,flash_varlen")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "gpu_last_run.md")
    a = parser.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="ncr-gpu-bench-"))
    env = bench_env(work)
    write_sft(work / "sft.jsonl", n=a.samples)
    write_dpo(work / "dpo.jsonl", n=2)  # (workload_flops reads both files)

    if a.device == "cuda":
        card, listed, measured = card_peak()
        peak = listed or measured
        peak_note = f"{card}: datasheet dense bf16 {listed} TFLOP/s" if listed else f"{card}: not listed"
        peak_note += f"; a measured 8192^3 bf16 matmul ran at {measured:.0f} TFLOP/s"
        hardware, precision, kernels = ["hardware=gpu_1x"], "bf16", a.kernels.split(",")
    else:
        card, peak, peak_note = "cpu", None, "a CPU run tries the script; no MFU"
        hardware, precision, kernels = ["hardware=cpu"], "fp32", ["sdpa"]

    rows = []
    header = [
        f"`{' '.join(sys.argv)}` on {card}, {time.strftime('%Y-%m-%d %H:%M')}; {peak_note}.",
        "",
        "| shape | attention kernel (as ran) | tok/s | model TFLOP/s | MFU | training s |",
        "|---|---|---|---|---|---|",
    ]

    def write_table() -> str:  # after every row: a run stopped at the device's time limit keeps what it measured
        text = "\n".join([*header, *("| " + " | ".join(r) + " |" for r in rows)]) + "\n"
        a.out.write_text(text)
        return text

    for shape_name in a.shapes.split(","):
        model = work / f"model-{shape_name}"
        build_model(model, shape_name)
        shape_work = work / shape_name  # run_all's layout: model/, sft.jsonl, dpo.jsonl
        shape_work.mkdir(exist_ok=True)
        for name, target in (("model", model), ("sft.jsonl", work / "sft.jsonl"), ("dpo.jsonl", work / "dpo.jsonl")):
            if not (shape_work / name).exists():
                (shape_work / name).symlink_to(target)
        samples, _ = workload_flops(shape_work)
        per_token = sft_flops(Shape.of(model), samples, 16, LORA_TARGETS) / sum(n for n, _ in samples)
        for kernel in kernels:
            if a.device == "cuda" and (why := cannot_run(kernel)):  # (flash-attention not installed, say): no launch
                rows.append((shape_name, kernel, f"cannot run here: {why}", "", "", ""))
                write_table()
                continue
            extra = [*hardware, f"hardware.packed_attention={kernel}"]
            try:
                m = ours("sft", shape_work, env, extra=extra, precision=precision)
            except Failed as failed:
                rows.append((shape_name, kernel, f"did not run: {str(failed).splitlines()[-1][:160]}", "", "", ""))
                write_table()
                continue
            rate = m["tokens_seen"] / m["train_runtime_s"]
            tflops = rate * per_token / 1e12
            mfu = f"{100 * tflops / peak:.1f}%" if peak else ""
            ran = ",".join(m.get("attention_kernels", [])) or "?"
            rows.append((shape_name, ran, f"{rate:,.0f}", f"{tflops:.2f}", mfu, f"{m['train_runtime_s']:.1f}"))
            print(rows[-1], flush=True)
            write_table()

    print(write_table())
    print(json.dumps({"work": str(work)}))


if __name__ == "__main__":
    main()
