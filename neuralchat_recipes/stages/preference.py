"""Preference data for the kinds that learn from it (dpo, orpo, cpo, kto, reward): rows -> trainer datasets.

Rows come from the format adapters as ``{"prompt": [messages], "chosen": str, "rejected": str}`` (pairs) or
``{"prompt": [messages], "completion": str, "label": bool}`` (unpaired, KTO); prompts are rendered with the
stage's template, so every kind sees the same text a chat model is prompted with.
"""

from __future__ import annotations

from typing import Any

from .common import render_prompt


def pairs_dataset(rows: list[dict[str, Any]], tokenizer, template: str, with_length: bool = False):
    """prompt / chosen / rejected columns (and `length`, the tokens of the longer sequence, for length grouping)."""
    from datasets import Dataset

    data = {
        "prompt": [render_prompt(tokenizer, template, r["prompt"]) for r in rows],
        "chosen": [r["chosen"] for r in rows],
        "rejected": [r["rejected"] for r in rows],
    }
    if with_length:
        n = {k: [len(ids) for ids in tokenizer(v, add_special_tokens=False)["input_ids"]] for k, v in data.items()}
        data["length"] = [p + max(c, r) for p, c, r in zip(n["prompt"], n["chosen"], n["rejected"])]
    return Dataset.from_dict(data)


def unpaired(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each preference pair as two unpaired examples: the chosen answer desirable, the rejected one not."""
    return [
        {"prompt": r["prompt"], "completion": answer, "label": label}
        for r in rows
        for answer, label in ((r["chosen"], True), (r["rejected"], False))
    ]


def unpaired_dataset(rows: list[dict[str, Any]], tokenizer, template: str):
    """prompt / completion / label columns (KTO)."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [render_prompt(tokenizer, template, r["prompt"]) for r in rows],
            "completion": [r["completion"] for r in rows],
            "label": [bool(r["label"]) for r in rows],
        }
    )
