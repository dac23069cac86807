"""The offline demo model, ``builtin:tiny-llama``: a small Llama with a word-level tokenizer.

Built deterministically (fixed seed, fixed vocabulary) on first use into a cache directory,
then loaded like any local checkpoint. Nothing is downloaded.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from .data.paths import BUNDLED_DIR
from .data.templates import TEMPLATES, jinja_chat_template
from .model_sources import build_dir_beside, cache_root

BUILDER_VERSION = "1"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
# Words beyond the bundled task, so test fixtures in real dataset schemas tokenize to something.
COMMON_WORDS = (
    "a an the is are was were be been to of and or in on at for with from by as it this that these those "
    "what which who whom whose why how when where yes no not do does did can could will would should may might "
    "i you he she we they me him her us them my your his its our their please thank thanks hello hi "
    "question answer summary article text code python function write explain give list name one two three "
    "four five six seven eight nine ten good bad best better true false help helpful honest assistant user "
    "system response instruction input output task data model world city country color number word sentence "
    "cat dog sky blue red green sun water food time day year people make use say get go know think see come"
).split()


def _vocabulary() -> list[str]:
    words: set[str] = set(COMMON_WORDS)
    pattern = re.compile(r"\w+|[^\w\s]+")
    for t in TEMPLATES.values():
        for piece in (*t.system, *t.user, *t.assistant):
            words.update(pattern.findall(piece))

    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    for path in sorted(BUNDLED_DIR.glob("tiny_arith_*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            for text in strings(json.loads(line)):
                words.update(pattern.findall(text))
    words.update(str(i) for i in range(100))
    words -= {"EOS"}
    words.discard("")
    return SPECIALS + sorted(words - set(SPECIALS))


# The demo model's shape (its config.json, without building it: the plan's memory estimate reads it)
TINY_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}


def builtin_config(path: str) -> dict:
    """config.json of a builtin model, as it will be built."""
    if path.split(":", 1)[1] != "tiny-llama":
        raise ValueError(f"unknown builtin model {path!r}")
    return {**TINY_CONFIG, "vocab_size": len(_vocabulary())}


def build_tiny_llama(target: Path) -> Path:
    """Write the model, tokenizer and chat template to ``target`` (atomically)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.chat_template = jinja_chat_template("neural_chat")
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=TINY_CONFIG["hidden_size"],
        intermediate_size=TINY_CONFIG["intermediate_size"],
        num_hidden_layers=TINY_CONFIG["num_hidden_layers"],
        num_attention_heads=TINY_CONFIG["num_attention_heads"],
        num_key_value_heads=TINY_CONFIG["num_key_value_heads"],
        max_position_embeddings=TINY_CONFIG["max_position_embeddings"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = build_dir_beside(target)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "builder.json").write_text(json.dumps({"builder": "tiny-llama", "version": BUILDER_VERSION}))
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "builder.json").is_file():  # someone else finished first otherwise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_builtin(path: str) -> Path:
    """Local directory of a builtin model, building it on first use."""
    name = path.split(":", 1)[1]
    if name != "tiny-llama":
        raise ValueError(f"unknown builtin model {path!r}")
    target = cache_root() / "builtin" / f"tiny-llama-v{BUILDER_VERSION}"
    if not (target / "builder.json").is_file():
        build_tiny_llama(target)
    return target
