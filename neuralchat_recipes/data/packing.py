"""Packing tokenized samples into fixed-length blocks, each sample isolated from the others.

ITREX's ``--dataset_concatenation`` concatenates every sample and cuts the stream into
``max_seq_length`` blocks, so a sample attends to the samples before it in its block and may be
cut in two. Here whole samples are packed (best fit, longest first) and the collator gives each
block a block-diagonal causal mask and positions that restart per sample: a packed batch
computes the same loss as its samples run one by one (tests/unit/test_packing.py), with almost
no padding.

The mask is a 4D additive float mask (0 = attend, dtype min = blocked), which transformers
passes through unchanged to sdpa and eager attention (CPU, XPU, HPU); flash-attention's varlen
path would use the restarting ``position_ids`` instead (``mask="position_ids"``).
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


def labels_of(example: dict[str, list[int]]) -> list[int]:
    """Labels of one tokenized sample: its tokens where trained, IGNORE elsewhere."""
    return [t if m else IGNORE for t, m in zip(example["input_ids"], example["assistant_masks"])]


def pack(examples: list[dict[str, list[int]]], block_size: int) -> list[dict[str, list[int]]]:
    """Best-fit-decreasing bin packing of whole samples into blocks of at most block_size tokens.

    Each block holds input_ids, labels and position_ids (restarting at 0 for every sample). A
    sample's first label is IGNORE: nothing before it in its own sequence predicts it, and the
    previous sample must not."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]), reverse=True)
    blocks: list[list[int]] = []  # sample indices per block
    free: list[int] = []  # free space per block
    by_space: list[list[int]] = [[] for _ in range(block_size + 1)]  # block ids by their free space
    for i in order:
        n = len(examples[i]["input_ids"])
        if n > block_size:
            raise ValueError(f"sample {i} has {n} tokens, more than the block size {block_size}; truncate first")
        space = next((s for s in range(n, block_size + 1) if by_space[s]), None)
        if space is None:
            b = len(blocks)
            blocks.append([])
            free.append(block_size)
        else:
            b = by_space[space].pop()
        blocks[b].append(i)
        free[b] -= n
        by_space[free[b]].append(b)
    out = []
    for members in blocks:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for i in members:
            ex = examples[i]
            lab = labels_of(ex)
            lab[0] = IGNORE
            ids += ex["input_ids"]
            labels += lab
            positions += list(range(len(ex["input_ids"])))
        out.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    return out


def non_pad_fraction(lengths: list[int], batch_size: int, pad_to: int | None = None) -> float:
    """Share of real tokens when consecutive groups of batch_size sequences are padded to their
    longest (or to pad_to)."""
    if not lengths:
        return 0.0
    total = 0
    for start in range(0, len(lengths), batch_size):
        group = lengths[start:start + batch_size]
        total += (pad_to or max(group)) * len(group)
    return sum(lengths) / total


class PackedCollator:
    """Pads packed blocks and builds the attention that keeps their samples apart.

    ``pad_to``: pad every batch to this length (static shapes) instead of its longest block.
    ``mask``: ``"4d"`` (block-diagonal causal float mask; sdpa / eager attention) or
    ``"position_ids"`` (no mask; transformers derives the isolation from the restarting positions)."""

    def __init__(self, pad_token_id: int, pad_to: int | None = None, mask: str = "4d", dtype=None):
        self.pad_token_id = pad_token_id
        self.pad_to = pad_to
        self.mask = mask
        self.dtype = dtype
        self.real_tokens = 0
        self.padded_tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        length = self.pad_to or max(len(f["input_ids"]) for f in features)
        batch = len(features)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE, dtype=torch.long)
        # padding continues as its own "sample" (positions from 0), so it never joins a real one
        position_ids = torch.arange(length).repeat(batch, 1)
        segments = torch.full((batch, length), -1, dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.as_tensor(f["input_ids"])
            labels[row, :n] = torch.as_tensor(f["labels"])
            pos = torch.as_tensor(f["position_ids"])
            position_ids[row, :n] = pos
            position_ids[row, n:] = torch.arange(length - n)
            segments[row, :n] = torch.cumsum((pos == 0).long(), 0)
            self.real_tokens += n
        self.padded_tokens += batch * length
        out = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        if self.mask == "4d":
            dtype = self.dtype or torch.float32
            causal = torch.ones(length, length, dtype=torch.bool).tril()
            same = segments[:, :, None] == segments[:, None, :]
            allowed = same & causal  # padding (segment -1) attends causally to padding only
            mask = torch.zeros(batch, 1, length, length, dtype=dtype)
            mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
            out["attention_mask"] = mask
        return out

    @property
    def fraction(self) -> float | None:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else None
