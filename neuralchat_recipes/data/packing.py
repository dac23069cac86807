"""Packing tokenized samples into fixed-length blocks, each sample isolated from the others.

ITREX's ``--dataset_concatenation`` concatenates every sample and cuts the stream into
``max_seq_length`` blocks, so a sample attends to the samples before it in its block and may be
cut in two. Here whole samples are packed (best fit, longest first) and the collator gives each
block a block-diagonal causal mask and positions that restart per sample: a packed batch
computes the same loss as its samples run one by one (tests/unit/test_packing.py), with almost
no padding.

Two ways to keep samples apart:
- ``"segments"`` (models on transformers' attention interface, off Gaudi): no mask at all; an
  attention function registered as ``ncr_packed_sdpa`` (data/packed_attention.py) runs causal
  attention on each sample's span of the block (found from the restarting position ids): a varlen
  kernel on CUDA, SDPA per span on a CPU. It costs the sum of squared sample lengths instead of the
  block length squared, so isolated packing is as fast as ITREX's leaky concatenation.
- ``"4d"``: a block-diagonal causal mask passed as ``attention_mask`` (bool for sdpa, additive
  float for eager), which transformers hands to attention unchanged (e.g. Gaudi's own kernels).
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


def labels_of(example: dict[str, list[int]]) -> list[int]:
    """Labels of one tokenized sample: its tokens where trained, IGNORE elsewhere."""
    return [t if m else IGNORE for t, m in zip(example["input_ids"], example["assistant_masks"])]


class _Spaces:
    """The free spaces of the open blocks, as a max segment tree over 1..block_size: the smallest space that
    holds n tokens is found in O(log block_size) (TRL's packer and "Fewer Truncations Improve Language
    Modeling" use the same structure), so half a million samples pack in seconds."""

    def __init__(self, block_size: int):
        self.size = 1 << max(block_size - 1, 1).bit_length()
        self.tree = [0] * (2 * self.size)

    def _set(self, space: int, value: int) -> None:
        i = self.size + space - 1
        self.tree[i] = value
        tree = self.tree
        while i > 1:
            i >>= 1
            left, right = tree[2 * i], tree[2 * i + 1]
            tree[i] = left if left >= right else right

    def add(self, space: int) -> None:
        self._set(space, space)

    def remove(self, space: int) -> None:
        self._set(space, 0)

    def smallest_at_least(self, n: int) -> int:
        """The smallest open space >= n, or 0 when none is."""
        tree = self.tree
        if tree[1] < n:
            return 0
        i = 1
        while i < self.size:
            i = 2 * i if tree[2 * i] >= n else 2 * i + 1
        return tree[i]


def plan_blocks(lengths, block_size: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: the sample indices of each block of at most ``block_size`` tokens.
    Longest first; each sample goes to the open block whose free space fits it most tightly (among equals the
    one opened last), or opens a block."""
    import numpy as np

    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and int(lengths.max()) > block_size:
        i = int(np.argmax(lengths))
        raise ValueError(f"sample {i} has {int(lengths[i])} tokens, more than the block size {block_size}; truncate")
    order = np.argsort(-lengths, kind="stable")
    spaces = _Spaces(block_size)
    by_space: dict[int, list[int]] = {}  # open block ids by their free space
    blocks: list[list[int]] = []
    free: list[int] = []
    for i, n in zip(order.tolist(), lengths[order].tolist()):
        space = spaces.smallest_at_least(n) if n else 0
        if space:
            b = by_space[space].pop()
            if not by_space[space]:
                spaces.remove(space)
        else:
            b = len(blocks)
            blocks.append([])
            free.append(block_size)
        blocks[b].append(i)
        free[b] -= n
        if free[b] > 0:
            if not by_space.get(free[b]):
                by_space[free[b]] = []
                spaces.add(free[b])
            by_space[free[b]].append(b)
    return blocks


def assemble(members: list[dict[str, list[int]]]) -> dict[str, list[int]]:
    """One packed block from its samples: input_ids, labels, position_ids (restarting at 0 per sample). A
    sample's first label is IGNORE: nothing before it in its own sequence predicts it, and the previous sample
    must not."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for ex in members:
        lab = labels_of(ex)
        lab[0] = IGNORE
        ids += list(ex["input_ids"])
        labels += lab
        positions += list(range(len(ex["input_ids"])))
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def pack(examples: list[dict[str, list[int]]], block_size: int) -> list[dict[str, list[int]]]:
    """Samples (Python lists) packed into blocks of at most block_size tokens (plan_blocks, assemble)."""
    plan = plan_blocks([len(e["input_ids"]) for e in examples], block_size)
    return [assemble([examples[i] for i in members]) for members in plan]


class PackedBlocks:
    """A map-style dataset of packed blocks over tokenized samples in Arrow (input_ids, assistant_masks): a
    block's samples are read from the memory-mapped files when the data loader asks for it, so nothing is
    copied or held in memory beyond a batch."""

    def __init__(self, samples, plan: list[list[int]]):
        self.samples = samples.select_columns(["input_ids", "assistant_masks"])
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        rows = self.samples[self.plan[index]]
        return assemble(
            [{"input_ids": i, "assistant_masks": m} for i, m in zip(rows["input_ids"], rows["assistant_masks"])]
        )

    def lengths(self, sample_lengths) -> list[int]:
        return [int(sum(sample_lengths[i] for i in members)) for members in self.plan]


def cached_plan(root, key: dict, lengths, block_size: int) -> list[list[int]]:
    """plan_blocks, kept in ``root`` under a hash of ``key`` (flat member indices and block offsets, numpy)."""
    import hashlib
    import json
    import os
    from pathlib import Path

    import numpy as np

    path = Path(root) / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24] + ".npz")
    if path.is_file():
        saved = np.load(path)
        flat, offsets = saved["members"], saved["offsets"]
        return [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    plan = plan_blocks(lengths, block_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    offsets = np.cumsum([0] + [len(b) for b in plan])
    np.savez(tmp, members=np.asarray([i for b in plan for i in b], dtype=np.int64), offsets=offsets)
    tmp.replace(path)
    return plan


def stream_of(make):
    """A torch IterableDataset whose every pass iterates a new ``make()`` (the Trainer restarts it per epoch)."""
    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(make())

    return Stream()


def packed_stream(samples, block_size: int, buffer: int = 2000):
    """Blocks packed from a stream of tokenized samples: best fit within each run of ``buffer`` samples."""
    pending: list[dict[str, list[int]]] = []
    for sample in samples:
        pending.append({"input_ids": sample["input_ids"], "assistant_masks": sample["assistant_masks"]})
        if len(pending) >= buffer:
            yield from pack(pending, block_size)
            pending = []
    if pending:
        yield from pack(pending, block_size)


def non_pad_fraction(lengths: list[int], batch_size: int, pad_to: int | None = None) -> float:
    """Share of real tokens when consecutive groups of batch_size sequences are padded to their
    longest (or to pad_to)."""
    if not lengths:
        return 0.0
    total = 0
    for start in range(0, len(lengths), batch_size):
        group = lengths[start : start + batch_size]
        total += (pad_to or max(group)) * len(group)
    return sum(lengths) / total


class PackedCollator:
    """Pads packed blocks and builds the attention that keeps their samples apart.

    ``pad_to``: pad every batch to this length (static shapes) instead of its longest block.
    ``mask``: ``"4d"`` (block-diagonal causal mask; bool, or additive float when ``dtype`` is
    given, for eager attention) or ``"segments"`` (no mask: the model runs ``ncr_packed_sdpa``).
    ``labelled_logits``: the model computes logits only where a label is predicted (prompt
    tokens, the last token of each sample and padding predict nothing): the batch carries
    ``logits_to_keep`` (a boolean mask) and ``shift_labels`` (the targets of those positions),
    which the model's own causal-LM loss and the Trainer's token count take as they are. For
    models that pass a boolean ``logits_to_keep`` to ``slice_logits_to_keep`` (see
    ``supports_labelled_logits``)."""

    def __init__(
        self, pad_token_id: int, pad_to: int | None = None, mask: str = "4d", dtype=None, labelled_logits: bool = False
    ):
        if mask not in ("4d", "segments"):
            raise ValueError(f"mask must be 4d or segments, not {mask!r}")
        self.pad_token_id = pad_token_id
        self.pad_to = pad_to
        self.mask = mask
        self.dtype = dtype
        self.labelled_logits = labelled_logits
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
        if self.labelled_logits:
            targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)  # what each position predicts
            keep = targets != IGNORE
            out["logits_to_keep"], out["shift_labels"] = keep, targets[keep]
        if self.mask == "4d":
            causal = torch.ones(length, length, dtype=torch.bool).tril()
            same = segments[:, :, None] == segments[:, None, :]
            allowed = (same & causal)[:, None]  # padding (segment -1) attends causally to padding only
            if self.dtype is None:
                out["attention_mask"] = allowed
            else:
                mask = torch.zeros(batch, 1, length, length, dtype=self.dtype)
                out["attention_mask"] = mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return out

    @property
    def fraction(self) -> float | None:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else None


def supports_labelled_logits(model) -> bool:
    """Whether the model's forward slices hidden states by a boolean ``logits_to_keep`` (transformers'
    ``slice_logits_to_keep``) before its LM head, so ``PackedCollator(labelled_logits=True)`` applies."""
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(
            model.forward
        ).parameters and "slice_logits_to_keep(" in inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        return False
