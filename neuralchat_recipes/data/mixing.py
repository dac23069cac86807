"""Weighted mixtures of datasets: a stage's `dataset` and its `mix` entries, sampled by weight under the seed."""

from __future__ import annotations

from typing import Any


def interleave(parts: list, weights: list[float], seed: int, stopping: str):
    """One dataset drawing each next row from part k with probability weights[k] / sum(weights), deterministic
    under ``seed`` (``datasets.interleave_datasets``: an index over the parts' memory-mapped rows, nothing is
    copied). ``stopping``: first_exhausted (each row used at most once) or all_exhausted (smaller parts repeat)."""
    if len(parts) == 1:
        return parts[0]
    from datasets import interleave_datasets

    total = sum(weights)
    return interleave_datasets(parts, probabilities=[w / total for w in weights], seed=seed, stopping_strategy=stopping)


def realised_mix(mixed, keys: list[str], weights: list[float]) -> dict[str, dict[str, Any]]:
    """How many rows of the mixture came from each part (its ``source`` column), beside the share asked for."""
    import numpy as np

    if "source" not in mixed.column_names or len(keys) == 1:
        return {}
    counts = np.bincount(mixed.with_format("arrow")["source"].to_numpy().astype(np.int64), minlength=len(keys))
    total = max(int(counts.sum()), 1)
    wanted = sum(weights)
    return {
        key: {"rows": int(n), "share": round(int(n) / total, 4), "weight": round(w / wanted, 4)}
        for key, n, w in zip(keys, counts, weights)
    }
