"""Tokenize canonical SFT rows into input_ids + assistant_masks (1 = trained token), as memory-mapped Arrow.

A conversation is rendered whole and tokenized whole, so the tokens are the ones the model sees when its
saved chat template prompts it (piece-by-piece tokenization can split differently at piece borders):

- ``library``: the tokenizer's chat template has ``{% generation %}`` tags (every template this project
  saves has them) and the tokenizer is fast: ``apply_chat_template(..., return_assistant_tokens_mask=True)``;
- ``spans``: the same text and trained spans from the template table (data/templates.py), or, for a model's
  own template without tags, from rendering the conversation up to each assistant turn; the tokenizer's
  offsets mark the tokens that overlap a trained span (what the library does, vectorized);
- ``pieces``: slow tokenizers (no offsets): each piece tokenized alone (the fallback).
A test checks the three agree where their assumptions hold. Rows left with no trained token are dropped and
counted; rows cut by ``max_prompt_length`` / ``max_seq_length`` are counted.

Tokenized data is cached under ``<output_root>/cache/tokenized/<key>/`` (Arrow files written by a
multi-process ``datasets.map``, renamed into place when complete), keyed by everything it depends on.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .templates import segments

TOKENIZED_FORMAT = "2"  # bump when what tokenize_batch writes changes


def adds_bos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def has_generation_tags(tokenizer) -> bool:
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return bool(template) and "{% generation %}" in template.replace("{%-", "{%").replace("-%}", "%}")


def choose_path(tokenizer, template: str, prefer_library: bool = False) -> str:
    """Which way a tokenizer and template are tokenized (see the module doc)."""
    if not getattr(tokenizer, "is_fast", False):
        return "pieces"
    if template == "tokenizer" and has_generation_tags(tokenizer):
        return "library"
    if prefer_library and has_generation_tags(tokenizer):
        return "library"
    return "spans"


def pieces_of(tokenizer, template: str, messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """(text, trained) pieces whose concatenation is the whole rendered conversation."""
    if template != "tokenizer":
        return segments(template, messages, tokenizer.eos_token)
    # the tokenizer's own chat template: each assistant turn is the difference between the conversation
    # rendered with and without it
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    out: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(clean[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(clean[: i + 1], tokenize=False)
        out.append((prompt[len(done) :], False))
        out.append((full[len(prompt) :], m.get("train", True)))
        done = full
    return [(t, trained) for t, trained in out if t]


def _span_mask(encoding, size: int, spans: list[tuple[int, int]], text_length: int) -> bytearray:
    """1 for every token that holds a character of a trained span (the library's overlap rule), found from the
    span's first and last characters (two lookups a span, instead of a pass over every token's offsets)."""
    mask = bytearray(size)
    for start, end in spans:
        first = last = None
        for char in range(start, end):  # the first character that belongs to a token (whitespace may not)
            first = encoding.char_to_token(char)
            if first is not None:
                break
        for char in range(end - 1, start - 1, -1):
            last = encoding.char_to_token(char)
            if last is not None:
                break
        if first is not None and last is not None and last >= first:
            mask[first : last + 1] = b"\x01" * (last + 1 - first)
    del text_length
    return mask


def encode_conversations(tokenizer, template: str, conversations: list[list[dict[str, Any]]], path: str):
    """(token ids, trained mask) of each conversation, by ``path`` (library | spans | pieces), with the BOS the
    tokenizer adds to plain text for the project's templates (a model's own template writes its BOS itself)."""
    bos = [tokenizer.bos_token_id] if template != "tokenizer" and adds_bos(tokenizer) else []
    out = []
    if path == "library":
        clean = [[{k: v for k, v in m.items() if k != "train" or v is False} for m in c] for c in conversations]
        enc = tokenizer.apply_chat_template(clean, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        for ids, mask in zip(enc["input_ids"], enc["assistant_masks"]):
            out.append((bos + list(ids), bytearray(len(bos)) + bytearray(mask)))
        return out
    rendered = [pieces_of(tokenizer, template, c) for c in conversations]
    if path == "spans":
        texts, spans = [], []
        for pieces in rendered:
            text, row_spans, at = "", [], 0
            for piece, trained in pieces:
                if trained:
                    row_spans.append((at, at + len(piece)))
                text += piece
                at += len(piece)
            texts.append(text)
            spans.append(row_spans)
        # the Rust tokenizer directly: its encodings answer char -> token without a Python list of offsets
        encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
        for encoding, text, row_spans in zip(encodings, texts, spans):
            ids = encoding.ids
            out.append((bos + ids, bytearray(len(bos)) + _span_mask(encoding, len(ids), row_spans, len(text))))
        return out
    # pieces: each piece tokenized alone (slow tokenizers have no offsets)
    flat = [piece for pieces in rendered for piece, _ in pieces]
    ids_of = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    at = 0
    for pieces in rendered:
        ids, mask = list(bos), bytearray(len(bos))
        for _, trained in pieces:
            piece_ids = ids_of[at]
            at += 1
            ids += piece_ids
            mask += (b"\x01" if trained else b"\x00") * len(piece_ids)
        out.append((ids, mask))
    return out


def tokenize_batch(
    batch: dict[str, list],
    tokenizer,
    template: str,
    max_seq_length: int,
    max_prompt_length: int | None,
    loss_on: str,
    path: str,
    source: int = 0,
) -> dict[str, list]:
    """A batch of canonical rows (``messages``) -> input_ids, assistant_masks, length, truncated, source. Rows
    with no trained token left after truncation are dropped (the batch shrinks)."""
    encoded = encode_conversations(tokenizer, template, batch["messages"], path)
    bos = 1 if template != "tokenizer" and adds_bos(tokenizer) else 0
    out: dict[str, list] = {"input_ids": [], "assistant_masks": [], "length": [], "truncated": [], "source": []}
    for ids, mask in encoded:  # (mask: a bytearray of 0/1, so finding and cutting run in C)
        cut = False
        first = mask.find(1)  # where the first answer starts (-1: none)
        if max_prompt_length and first > max_prompt_length:
            drop = first - max_prompt_length  # keep the end of the prompt, next to the answer
            ids, mask = ids[:bos] + ids[bos + drop :], mask[:bos] + mask[bos + drop :]
            cut = True
        if len(ids) > max_seq_length:
            ids, mask = ids[:max_seq_length], mask[:max_seq_length]
            cut = True
        if loss_on == "all":
            mask = bytearray(bos) + b"\x01" * (len(ids) - bos)
        if mask.find(1) < 0:
            continue
        out["input_ids"].append(ids)
        out["assistant_masks"].append(list(mask))
        out["length"].append(len(ids))
        out["truncated"].append(cut)
        out["source"].append(source)
    return out


def tokenized_features():
    from datasets import Features, Sequence, Value

    return Features(
        {
            "input_ids": Sequence(Value("int32")),
            "assistant_masks": Sequence(Value("int8")),
            "length": Value("int32"),
            "truncated": Value("bool"),
            "source": Value("int16"),
        }
    )


def tokenize_sft(
    rows: list[dict[str, Any]],
    tokenizer,
    template: str,
    max_seq_length: int,
    max_prompt_length: int | None,
    loss_on: str,
    counts: dict[str, int] | None = None,
    path: str | None = None,
) -> list[dict[str, list[int]]]:
    """Python-list form of tokenize_batch for small sets (tests, bench): input_ids and assistant_masks per
    kept row; ``counts`` receives rows / truncated / dropped."""
    path = path or choose_path(tokenizer, template)
    out = tokenize_batch(
        {"messages": [r["messages"] for r in rows]},
        tokenizer,
        template,
        max_seq_length,
        max_prompt_length,
        loss_on,
        path,
    )
    if counts is not None:
        counts.update(rows=len(rows), truncated=sum(out["truncated"]), dropped=len(rows) - len(out["input_ids"]))
    return [{"input_ids": i, "assistant_masks": m} for i, m in zip(out["input_ids"], out["assistant_masks"])]


def tokenizer_identity(tokenizer) -> str:
    """A hash of what decides how a tokenizer splits and marks text: its model, normalizer and
    pre-tokenizer (fast tokenizers), or its vocabulary, plus special tokens and chat template."""
    import hashlib

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


# ---- the cache ---------------------------------------------------------------------------------------------
def cache_key(key: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps([TOKENIZED_FORMAT, key], sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_cached(cache_root: Path, key: dict[str, Any]):
    """(the tokenized Arrow dataset, its counts) from the cache, or None."""
    target = Path(cache_root) / cache_key(key)
    meta = target / "meta.json"
    if not meta.is_file():
        return None
    info = json.loads(meta.read_text())
    return _open(target, info["files"]), info["counts"]


def _open(target: Path, files: list[str]):
    from datasets import Dataset, concatenate_datasets

    parts = [Dataset.from_file(str(target / f)) for f in files]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def build_cached(cache_root: Path, key: dict[str, Any], make) -> tuple[Any, dict[str, int], bool]:
    """(dataset, counts, from the cache?) for ``key``. ``make(cache_file_name)`` runs the map that writes the
    Arrow files (to a temporary directory, renamed into place when complete: a crash leaves no half entry, and
    two jobs building the same entry do not clash) and returns (dataset, counts)."""
    hit = load_cached(cache_root, key)
    if hit is not None:
        return hit[0], hit[1], True
    target = Path(cache_root) / cache_key(key)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dataset, counts = make(str(tmp / "data.arrow"))
    files = sorted({Path(f["filename"]).name for f in dataset.cache_files})
    (tmp / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True, default=str))
    (tmp / "meta.json").write_text(json.dumps({"files": files, "counts": counts, "rows": len(dataset)}))
    try:
        tmp.rename(target)
    except OSError:  # another job finished the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
    hit = load_cached(cache_root, key)
    return hit[0], hit[1], False
