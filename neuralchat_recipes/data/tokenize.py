"""Tokenize canonical SFT rows into input_ids + assistant_masks (1 = trained token)."""

from __future__ import annotations

from typing import Any

from .templates import segments


def _pieces(tokenizer, template: str, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    if template != "tokenizer":
        return segments(template, messages, tokenizer.eos_token)
    # the tokenizer's own chat template: each assistant turn is the difference between the
    # conversation rendered with and without it
    out: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        out.append((prompt[len(done) :], False))
        out.append((full[len(prompt) :], m.get("train", True)))
        done = full
    return [(t, trained) for t, trained in out if t]


def adds_bos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def tokenize_sft(
    rows: list[dict[str, Any]],
    tokenizer,
    template: str,
    max_seq_length: int,
    max_prompt_length: int | None,
    loss_on: str,
    counts: dict[str, int] | None = None,
) -> list[dict[str, list[int]]]:
    """Token ids and assistant masks (1 = trained) of each row. Rows left with no trained token (every answer
    cut off by truncation, or every turn of weight 0) are dropped; ``counts`` (if given) receives how many rows
    there were, how many were cut (``truncated``: prompt or tail) and how many ``dropped``."""
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) and template != "tokenizer" else []
    out = []
    truncated = dropped = 0
    for row in rows:
        ids: list[int] = list(bos)
        mask: list[int] = [0] * len(bos)
        first_trained = None
        for text, trained in _pieces(tokenizer, template, row["messages"]):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            if trained and first_trained is None:
                first_trained = len(ids)
            ids += piece
            mask += [1 if (trained or loss_on == "all") else 0] * len(piece)
        cut_here = False
        if max_prompt_length and first_trained is not None and first_trained > max_prompt_length:
            cut = first_trained - max_prompt_length  # keep the end of the prompt, next to the answer
            ids, mask = ids[: len(bos)] + ids[len(bos) + cut :], mask[: len(bos)] + mask[len(bos) + cut :]
            cut_here = True
        if len(ids) > max_seq_length:
            ids, mask = ids[:max_seq_length], mask[:max_seq_length]
            cut_here = True
        if any(mask):
            out.append({"input_ids": ids, "assistant_masks": mask})
            truncated += cut_here
        else:
            dropped += 1
    if counts is not None:
        counts.update(rows=len(rows), truncated=truncated, dropped=dropped)
    return out


def tokenizer_identity(tokenizer) -> str:
    """A hash of what decides how a tokenizer splits and marks text: its model, normalizer and
    pre-tokenizer (fast tokenizers), or its vocabulary, plus special tokens and chat template."""
    import hashlib
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps(
        [
            type(tokenizer).__name__,
            tokenizer.bos_token,
            tokenizer.eos_token,
            tokenizer.pad_token,
            adds_bos(tokenizer),
            tokenizer.chat_template,
        ],
        default=str,
    )
    return hashlib.sha256((body + extra).encode()).hexdigest()


def tokenize_cached(
    cache_root, key: dict[str, Any], build, counts: dict[str, int] | None = None
) -> tuple[list[dict[str, list[int]]], bool]:
    """(examples, whether they came from the cache) for a key that holds everything the tokenized
    data depends on: data identity, tokenizer identity, template and preprocessing settings. ``counts`` (filled by
    ``build``, see tokenize_sft) is stored with the entry and read back on a hit.

    Entries are written to a temporary directory and renamed into place, so a crash never leaves
    a half-written entry and two jobs building the same entry do not clash."""
    import hashlib
    import json
    import os
    import shutil
    from pathlib import Path

    from datasets import Dataset, load_from_disk

    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    target = Path(cache_root) / digest
    if (target / "dataset_info.json").is_file():
        if counts is not None and (target / "counts.json").is_file():
            counts.update(json.loads((target / "counts.json").read_text()))
        return load_from_disk(str(target)).to_list(), True
    examples = build()
    tmp = target.with_name(f".{digest}.{os.getpid()}.tmp")
    Path(cache_root).mkdir(parents=True, exist_ok=True)
    Dataset.from_list(examples).save_to_disk(str(tmp))
    (tmp / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True, default=str))
    if counts is not None:
        (tmp / "counts.json").write_text(json.dumps(counts))
    try:
        tmp.rename(target)
    except OSError:  # another job finished the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
    return examples, False
