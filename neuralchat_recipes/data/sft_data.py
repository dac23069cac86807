"""An SFT stage's training and held-out samples: each dataset entry read (Arrow), converted, tokenized and masked
by a multi-process map into the tokenized cache, then mixed by weight; or, for streamed entries, the same
steps applied lazily as the rows arrive.

The tokenized cache (``<output_root>/cache/tokenized/<key>/``) is keyed by everything the samples depend on:
the data's identity (a local file by its bytes), the tokenizer's identity, the template and every
preprocessing setting; a re-run with the same key opens the memory-mapped files and tokenizes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .loading import BATCH, convert_dataset_batch, data_cache, describe, identity, raw_splits, workers_for
from .mixing import interleave, realised_mix
from .tokenize import build_cached, cache_key, choose_path, tokenize_batch, tokenized_features, tokenizer_identity

log = logging.getLogger("neuralchat_recipes")

# Above these shares of a part's rows, cutting and dropping rows is worth a warning (a max_seq_length too short)
WARN_TRUNCATED_SHARE = 0.10
WARN_DROPPED_SHARE = 0.01


class NothingToLearn(ValueError):
    """Every sample of a part lost its trained tokens to truncation."""


@dataclass
class SFTData:
    train: Any  # datasets.Dataset (memory-mapped) or IterableDataset (streamed) of tokenized samples
    held: Any | None
    source: str
    streaming: bool
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # "train" / "eval" (+ per mix part)
    mix: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # a hash of what decides the training samples and their order (their tokenized caches, the mix)

    @property
    def tokens(self) -> int | None:
        """Tokens in the training samples (None for a stream)."""
        if self.streaming:
            return None
        import pyarrow.compute as pc

        return int(pc.sum(self.train.data.column("length")).as_py() or 0) if self.train.num_rows else 0

    def lengths(self):
        """Each training sample's length, in dataset order (a numpy array)."""
        return column(self.train, "length")


def column(samples, name: str):
    """One column of a (memory-mapped, maybe index-mapped) dataset as a numpy array, read by Arrow: indexing the
    dataset by name would format every row in Python (15 s for SlimOrca's lengths)."""
    return samples.with_format("arrow")[name].to_numpy()


def _convert_and_tokenize(batch, indices, dataset_json, tokenizer, template, settings, path, source):
    rows = convert_dataset_batch(batch, indices, dataset_json, "sft")
    return tokenize_batch(rows, tokenizer, template, *settings, path=path, source=source)


@contextlib.contextmanager
def _tokenizers_single_threaded(workers: int):
    """Map workers are forked processes: the tokenizers library's own threads would be unsafe there (and idle)."""
    if workers <= 1:
        yield
        return
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def tokenize_part(
    raw,
    dataset,
    tokenizer,
    template: str,
    settings: tuple,
    cache_root: Path,
    key: dict[str, Any],
    source: int,
) -> tuple[Any, dict[str, int], bool]:
    """(tokenized samples, counts, from the cache?) of one entry's raw rows (Arrow), through the tokenized cache."""
    path = choose_path(tokenizer, template)
    fn_kwargs = {
        "dataset_json": dataset.model_dump_json(),
        "tokenizer": tokenizer,
        "template": template,
        "settings": settings,
        "path": path,
        "source": source,
    }

    def make(cache_file: str):
        from .loading import _quiet

        workers = workers_for(len(raw))
        with _quiet(), _tokenizers_single_threaded(workers):
            samples = raw.map(
                _convert_and_tokenize,
                batched=True,
                batch_size=BATCH,
                with_indices=True,
                num_proc=workers if workers > 1 else None,
                remove_columns=raw.column_names,
                features=tokenized_features(),
                fn_kwargs=fn_kwargs,
                cache_file_name=cache_file,
                new_fingerprint=cache_key(key),  # (instead of hashing the tokenizer)
            )
        import pyarrow.compute as pc

        truncated = int(pc.sum(samples.data.column("truncated")).as_py() or 0) if samples.num_rows else 0
        return samples, {"rows": len(raw), "truncated": truncated, "dropped": len(raw) - len(samples)}

    return build_cached(cache_root, key, make)


def prepare(ctx, tokenizer, own_tokenizer=None) -> SFTData:
    """The stage's tokenized training samples (its `dataset` and `mix` entries, mixed by weight) and held-out
    samples. ``own_tokenizer``: the tokenizer with the model's own chat template, for entries whose `template`
    is `tokenizer` while the stage's is not."""
    from .. import ENGINE_FINGERPRINT_VERSION

    args, stage = ctx.args, ctx.stage
    root = Path(ctx.recipe.output_root).expanduser() / "cache"
    cache = data_cache(ctx.recipe.output_root)
    settings = (args.max_seq_length, args.max_prompt_length, args.loss_on)
    parts = stage.all_datasets
    streaming = any(d.streaming for _, d in parts)
    trains, helds, weights, counts, keys_of_parts = [], [], [], {}, []
    for source, (key, dataset) in enumerate(parts):
        template = dataset.template or args.template
        tok = own_tokenizer if template == "tokenizer" and args.template != "tokenizer" and own_tokenizer else tokenizer
        raw_train, raw_held = raw_splits(dataset, cache)
        for part, raw in (("train", raw_train), ("eval", raw_held if args.do_eval else None)):
            if raw is None:
                continue
            if dataset.streaming:
                samples = _tokenize_stream(raw, dataset, tok, template, settings, source)
            else:
                part_key = {
                    "engine": ENGINE_FINGERPRINT_VERSION,
                    "part": part,
                    "dataset": identity(dataset),
                    "tokenizer": tokenizer_identity(tok),
                    "template": template,
                    "max_seq_length": args.max_seq_length,
                    "max_prompt_length": args.max_prompt_length,
                    "loss_on": args.loss_on,
                }
                samples, counted, hit = tokenize_part(
                    raw, dataset, tok, template, settings, root / "tokenized", part_key, source
                )
                keys_of_parts.append(part_key)
                if hit:
                    log.info("[%s] %s: tokenized %s samples read from the cache", ctx.name, key, part)
                _report(ctx, key, part, counted, args)
                counts[part if len(parts) == 1 else f"{part}:{key}"] = counted
                if not samples.num_rows:
                    raise NothingToLearn(
                        f"`{ctx.name}.{key}`: no {part} sample has a token to learn from after truncation to "
                        f"max_seq_length={args.max_seq_length}; raise `{ctx.name}.max_seq_length`"
                    )
            (trains if part == "train" else helds).append(samples)
        weights.append(dataset.weight)
    train = interleave(trains, weights, args.seed, stage.mix_stopping)
    held = None
    if helds:
        from datasets import concatenate_datasets

        held = helds[0] if len(helds) == 1 else concatenate_datasets(helds)
    keys = [key for key, _ in parts]
    mix = {} if streaming else realised_mix(train, keys, weights)
    if streaming and len(parts) > 1:
        mix = {k: {"weight": round(w / sum(weights), 4)} for k, w in zip(keys, weights)}
    if len(parts) == 1:
        source = describe(stage.dataset)
    else:
        source = " + ".join(f"{describe(d)} (x{d.weight:g})" for _, d in parts)
    import hashlib
    import json

    order = json.dumps([keys_of_parts, weights, args.seed, stage.mix_stopping], sort_keys=True, default=str)
    return SFTData(
        train=train,
        held=held,
        source=source,
        streaming=streaming,
        counts=counts,
        mix=mix,
        key=hashlib.sha256(order.encode()).hexdigest(),
    )


def _tokenize_stream(raw, dataset, tokenizer, template, settings, source):
    """A stream's rows converted and tokenized as they arrive (row checks included: a bad row stops the stage)."""
    counter = {"seen": 0}
    path = choose_path(tokenizer, template)
    dataset_json = dataset.model_dump_json()

    def convert(batch):
        start = counter["seen"]
        size = len(next(iter(batch.values()))) if batch else 0
        counter["seen"] += size
        rows = convert_dataset_batch(batch, list(range(start, start + size)), dataset_json, "sft")
        return tokenize_batch(rows, tokenizer, template, *settings, path=path, source=source)

    if raw.column_names is None:  # a stream's columns are known once its first rows are read
        raw = raw._resolve_features()
    return raw.map(convert, batched=True, batch_size=BATCH, remove_columns=list(raw.column_names))


def _report(ctx, key: str, part: str, counted: dict[str, int], args) -> None:
    """Log how many rows truncation cut and dropped; a warning above WARN_*_SHARE."""
    rows, truncated, dropped = counted.get("rows", 0), counted.get("truncated", 0), counted.get("dropped", 0)
    if not (truncated or dropped):
        return
    heavy = truncated > WARN_TRUNCATED_SHARE * rows or dropped > WARN_DROPPED_SHARE * rows
    log.log(
        logging.WARNING if heavy else logging.INFO,
        "[%s] %s%s: %d of %d %s rows cut to max_seq_length=%d%s, %d dropped (no answer token left to learn from)%s",
        ctx.name,
        "warning: " if heavy else "",
        key,
        truncated,
        rows,
        part,
        args.max_seq_length,
        f" / max_prompt_length={args.max_prompt_length}" if args.max_prompt_length else "",
        dropped,
        f"; raise `{ctx.name}.max_seq_length` if that is more than you meant" if heavy else "",
    )
