"""Batches of unpacked tokenized samples: padded on the right, labels from the assistant mask."""

from __future__ import annotations

from typing import Any

from .packing import IGNORE


class MaskedCollator:
    """input_ids + assistant_masks samples -> input_ids, attention_mask, labels (IGNORE where not trained and on
    padding), padded to the batch's longest sample or to ``pad_to`` (static shapes)."""

    def __init__(self, pad_token_id: int, pad_to: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to = pad_to

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        length = self.pad_to or max(len(f["input_ids"]) for f in features)
        batch = len(features)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        labels = torch.full((batch, length), IGNORE, dtype=torch.long)
        for row, f in enumerate(features):
            ids = torch.as_tensor(f["input_ids"], dtype=torch.long)
            n = len(ids)
            input_ids[row, :n] = ids
            attention_mask[row, :n] = 1
            trained = torch.as_tensor(f["assistant_masks"], dtype=torch.bool)
            labels[row, :n] = torch.where(trained, ids, torch.full_like(ids, IGNORE))
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
