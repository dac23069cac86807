"""This machine's limit for LoRA training: fp32 matmul throughput on the model's own GEMM shapes, and the
FLOPs a LoRA training run's work costs, so each contender's tokens per second becomes a share of the peak.

    python bench/limit.py MODEL_DIR [--tokens 8192] [--reps 3]

The peak: every linear layer's GEMM of one training step, as the step runs it (forward X @ W^T with M
tokens; backward dY @ W for the input's gradient, the only one a frozen weight needs), timed with
torch's own matmul in fp32 on this process's threads; peak = their FLOPs / their time. Attention's
per-sample matmuls are smaller and slower than these, so a run that spends time there cannot reach it.

The work (stated once, used for every contender, counting only useful work, so padding, cross-sample
attention and logits of unlabelled positions are not credited):

    per token:   4 * N_linear                   frozen linear layers: forward 2N, input gradient 2N
               + 6 * r * (d_in + d_out) each    LoRA adapter: forward, input gradient, weight gradient
               + 6 * L * d_attn * layers        causal attention over its own sample of length L:
                                                 QK^T and AV forward 2*L*d (half the square), backward twice that
    per labelled token: 4 * d * V               LM head, forward and input gradient
    DPO adds the reference's forward pass over the same sequences (2N, attention 2Ld, head 2dV on the
    completion tokens); its policy's head is counted on completion tokens only.

Embedding lookups, norms, rotary, softmax and the optimizer are left out (well under 1% here).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def of(cls, model_dir: Path) -> Shape:
        c = json.loads((Path(model_dir) / "config.json").read_text())
        return cls(
            c["hidden_size"],
            c["intermediate_size"],
            c["num_hidden_layers"],
            c["num_attention_heads"],
            c.get("num_key_value_heads") or c["num_attention_heads"],
            c["vocab_size"],
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each linear layer in one decoder layer."""
        kv = self.hidden // self.heads * self.kv_heads
        d, f = self.hidden, self.intermediate
        return {
            "q_proj": (d, d),
            "k_proj": (d, kv),
            "v_proj": (d, kv),
            "o_proj": (d, d),
            "gate_proj": (d, f),
            "up_proj": (d, f),
            "down_proj": (f, d),
        }


def lora_flops(shape: Shape, r: int, targets: list[str]) -> int:
    """LoRA's FLOPs per token for the whole model."""
    return sum(6 * r * (i + o) for name, (i, o) in shape.linears().items() if name in targets) * shape.layers


def sft_flops(shape: Shape, samples: list[tuple[int, int]], r: int, targets: list[str]) -> float:
    """Useful FLOPs of LoRA SFT over ``samples`` = [(tokens, labelled tokens)], one pass."""
    n_linear = sum(i * o for i, o in shape.linears().values()) * shape.layers
    per_token = 4 * n_linear + lora_flops(shape, r, targets)
    total = 0.0
    for length, labelled in samples:
        total += length * per_token + 6 * length * length * shape.hidden * shape.layers
        total += labelled * 4 * shape.hidden * shape.vocab
    return total


def dpo_flops(
    shape: Shape, pairs: list[tuple[int, int, int]], r: int, targets: list[str], prompt_once: bool = False
) -> float:
    """Useful FLOPs of LoRA DPO over ``pairs`` = [(prompt, chosen, rejected) tokens]: the policy trains on both
    sequences (labels on the completion), and the reference reads both forward once. The DPO rate counts each
    prompt twice, and so does this; ``prompt_once`` counts the work done when a pair's prompt is computed once
    for both answers: the rejected answer's tokens then run alone, attending to the prompt and to themselves
    (x * p + x^2 / 2 query-key pairs against a whole sequence's L^2 / 2)."""
    n_linear = sum(i * o for i, o in shape.linears().values()) * shape.layers
    d, layers = shape.hidden, shape.layers
    per_token = 4 * n_linear + lora_flops(shape, r, targets)
    total = 0.0
    for p, c, x in pairs:
        for answer, prefix in ((c, 0), (x, 0 if not prompt_once else p)):
            tokens = p + answer - prefix  # the tokens this sequence runs
            pairs_qk = (p + answer) ** 2 - prefix**2  # twice its query-key pairs (causal: half the square)
            head = answer * d * shape.vocab  # labels on the completion
            total += tokens * per_token + 6 * pairs_qk * d * layers + 4 * head  # the policy
            total += tokens * 2 * n_linear + 2 * pairs_qk * d * layers + 2 * head  # the reference's forward
    return total


def gemm_peak(shape: Shape, tokens: int, reps: int = 3) -> dict:
    """fp32 GFLOP/s of one training step's linear-layer GEMMs (forward and input gradient) at ``tokens`` rows."""
    import torch

    rows = []
    total_flops = total_s = 0.0
    for name, (d_in, d_out) in [*shape.linears().items(), ("lm_head", (shape.hidden, shape.vocab))]:
        w = torch.randn(d_out, d_in)
        x, y = torch.randn(tokens, d_in), torch.empty(tokens, d_out)
        dy, dx = torch.randn(tokens, d_out), torch.empty(tokens, d_in)
        # into preallocated outputs: a fresh 100+ MB result per call would time the kernel's page faults
        # (glibc hands large blocks back to the system), not the matmul
        for direction, fn, dims in (
            ("forward", lambda x=x, w=w, y=y: torch.mm(x, w.t(), out=y), (d_in, d_out)),
            ("input gradient", lambda dy=dy, w=w, dx=dx: torch.mm(dy, w, out=dx), (d_out, d_in)),
        ):
            fn()  # warm-up
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            seconds = (time.perf_counter() - t0) / reps
            flops = 2.0 * tokens * d_in * d_out
            count = 1 if name == "lm_head" else shape.layers
            total_flops += flops * count
            total_s += seconds * count
            rows.append(
                {
                    "gemm": f"{name} {direction} [{tokens}x{dims[0]}]@[{dims[0]}x{dims[1]}]",
                    "gflops": flops / seconds / 1e9,
                }
            )
    return {
        "peak_gflops": total_flops / total_s / 1e9,
        "threads": torch.get_num_threads(),
        "tokens": tokens,
        "gemms": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--tokens", type=int, default=8192, help="rows of each GEMM (tokens in one step)")
    parser.add_argument("--reps", type=int, default=3)
    a = parser.parse_args()
    print(json.dumps(gemm_peak(Shape.of(a.model), a.tokens, a.reps), indent=1))


if __name__ == "__main__":
    main()
