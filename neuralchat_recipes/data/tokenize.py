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
        out.append((prompt[len(done):], False))
        out.append((full[len(prompt):], True))
        done = full
    return [(t, trained) for t, trained in out if t]


def adds_bos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def tokenize_sft(rows: list[dict[str, Any]], tokenizer, template: str, max_seq_length: int,
                 max_prompt_length: int | None, loss_on: str) -> list[dict[str, list[int]]]:
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) and template != "tokenizer" else []
    out = []
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
        if max_prompt_length and first_trained is not None and first_trained > max_prompt_length:
            cut = first_trained - max_prompt_length  # keep the end of the prompt, next to the answer
            ids, mask = ids[:len(bos)] + ids[len(bos) + cut:], mask[:len(bos)] + mask[len(bos) + cut:]
        ids, mask = ids[:max_seq_length], mask[:max_seq_length]
        if any(mask):
            out.append({"input_ids": ids, "assistant_masks": mask})
    return out
