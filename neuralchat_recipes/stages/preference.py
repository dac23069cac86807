"""Preference data for the kinds that learn from it (dpo, orpo, cpo, kto, reward): rows -> trainer datasets.

Rows come from the format adapters as ``{"prompt": [messages], "chosen": str, "rejected": str}`` (pairs) or
``{"prompt": [messages], "completion": str, "label": bool}`` (unpaired, KTO); prompts are rendered with the
stage's template, so every kind sees the same text a chat model is prompted with.
"""

from __future__ import annotations

from typing import Any

from .common import load_tokenizer, log, model_source, render_prompt
from .padding_free import apply_padding_free, padding_metrics
from .peft_config import build_peft_config
from .train_loop import completion_only_lm_head, train_and_save, training_config, training_model


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


def train_without_reference(ctx, family: str, config_extra: dict[str, Any], what: str = "") -> dict[str, Any]:
    """A reference-free preference trainer (ORPO, CPO / SimPO) on the stage's pairs, held-out pairs evaluated
    when ``do_eval``: the whole run of those kinds, which differ only in their trainer and its settings."""
    from ..data.loading import data_cache, load_training_rows

    args = ctx.args
    source = model_source(ctx.inputs[0])
    tokenizer = load_tokenizer(ctx.model, source, args.template, args.default_system)
    rows, held_out, data_source, mix = load_training_rows(ctx.stage, "preference", data_cache(ctx.recipe.output_root))
    dataset = pairs_dataset(rows, tokenizer, args.template)
    log.info("[%s] %d preference pairs from %s%s", ctx.name, len(dataset), data_source, what)
    trainer_cls, config_cls = ctx.device.trainer(family)
    config = training_config(ctx, config_cls, config_extra)
    model = training_model(ctx, source)
    padding = apply_padding_free(ctx, model)
    with completion_only_lm_head(ctx.device):
        trainer = trainer_cls(
            model=model,
            args=config,
            train_dataset=dataset,
            eval_dataset=pairs_dataset(held_out, tokenizer, args.template) if held_out and args.do_eval else None,
            processing_class=tokenizer,
            peft_config=build_peft_config(args.peft),
            **ctx.device.trainer_kwargs(args.device_args),
        )
        metrics = train_and_save(ctx, trainer, tokenizer, ("loss", "rewards/accuracies", "rewards/margins"))
    return {**metrics, "sample_unit": "pairs", **padding_metrics(padding, model), **({"mix": mix} if mix else {})}
