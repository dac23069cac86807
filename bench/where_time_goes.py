"""Where a LoRA training step's time goes, by part of the model: attention, MLP, LM head + loss, the rest.

    python bench/where_time_goes.py [--shape smollm2|bench20m] [--tokens 2048] [--labelled 0.8] [--steps 3]

Builds a randomly initialised Llama of the chosen shape (the weights do not change the cost: SmolLM2-135M's
is 30 thin layers, hidden 576, GQA 9/3, a 49,152-token vocabulary and a tied head), puts LoRA r16 on
q/k/v/o as the bench's SFT rows do, and times a whole training step on one packed block, then each
part alone on the same shapes, forward and backward: one attention block and one MLP (times the number
of layers), the LM head with the cross-entropy over the labelled positions only (as our packed SFT
computes it). What is left (embedding, norms, rotary, residual adds, the optimizer) is the step minus
those. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import SHAPES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per step (one packed block)")
    parser.add_argument("--labelled", type=float, default=0.8, help="share of positions with a label")
    parser.add_argument("--steps", type=int, default=3, help="repetitions of each measurement (after one warm-up)")
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=4096)
    model = get_peft_model(
        LlamaForCausalLM(config),
        LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"),
    )
    model.train()
    inner = model.base_model.model
    ids = torch.randint(0, config.vocab_size, (1, args.tokens))
    keep = torch.rand(args.tokens - 1) < args.labelled  # positions that predict a label
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        hidden = inner.model(input_ids=ids).last_hidden_state[0]
        logits = inner.lm_head(hidden[:-1][keep])
        torch.nn.functional.cross_entropy(logits.float(), ids[0, 1:][keep]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(fn, reps: int) -> float:
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps

    total = timed(step, args.steps)
    layer = inner.model.layers[0]
    x = torch.randn(1, args.tokens, config.hidden_size, requires_grad=True)
    positions = torch.arange(args.tokens)[None]
    rotary = inner.model.rotary_emb(x, positions)

    def attention() -> None:
        layer.self_attn(hidden_states=x, position_embeddings=rotary, attention_mask=None)[0].sum().backward()

    def mlp() -> None:
        layer.mlp(x).sum().backward()

    n_labelled = int(keep.sum())
    h = torch.randn(n_labelled, config.hidden_size, requires_grad=True)
    targets = ids[0, 1:][keep]

    def head() -> None:
        torch.nn.functional.cross_entropy(inner.lm_head(h).float(), targets).backward()

    parts = {
        "attention (q/k/v/o + LoRA, causal SDPA)": timed(attention, args.steps) * config.num_hidden_layers,
        "MLP (gate/up/down)": timed(mlp, args.steps) * config.num_hidden_layers,
        f"LM head + cross-entropy ({n_labelled} labelled positions)": timed(head, args.steps),
    }
    parts["embedding, norms, rotary, residuals, optimizer"] = max(0.0, total - sum(parts.values()))
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"`python bench/where_time_goes.py --shape {args.shape} --tokens {args.tokens} --labelled {args.labelled}` "
        f"({n_params / 1e6:.1f}M parameters, LoRA r16 on q/k/v/o, fp32, {torch.get_num_threads()} threads): "
        f"{args.tokens / total:,.0f} tokens/s, {1000 * total:,.0f} ms per step\n"
    )
    print("| part | share of a step | ms per step |\n|---|---|---|")
    for part, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {part} | {100 * seconds / total:.0f}% | {1000 * seconds:,.0f} |")


if __name__ == "__main__":
    main()
