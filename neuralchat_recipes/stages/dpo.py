"""DPO: TRL's DPOTrainer on preference rows, on top of the upstream model.

With a LoRA adapter the reference model is the policy with its adapter disabled (TRL does
that when it is given a peft_config and no ref_model), so no second copy of the weights is
loaded. Prompts longer than ``max_prompt_length`` keep their end; ``pad_to_max`` pads every
batch to ``max_length`` (static shapes for Gaudi).
"""

from __future__ import annotations

from typing import Any

from . import StageContext
from .common import check_adapter_fits, completion_only_lm_head, deepspeed_file, load_model, load_tokenizer, log, model_source, render_prompt, train_and_save, training_config, eval_kwargs
from .peft_config import build_peft_config


def with_prompt_limit(trainer_cls, max_prompt_length: int):
    """A DPOTrainer subclass that cuts tokenized prompts to their last max_prompt_length tokens."""

    class PromptLimitedDPOTrainer(trainer_cls):
        def _prepare_dataset(self, dataset, *a, **kw):
            dataset = super()._prepare_dataset(dataset, *a, **kw)
            if "prompt_ids" not in dataset.column_names:
                return dataset  # older TRL (optimum-habana) applies max_prompt_length itself
            return dataset.map(lambda ex: {"prompt_ids": ex["prompt_ids"][-max_prompt_length:]})

    PromptLimitedDPOTrainer.__name__ = trainer_cls.__name__
    return PromptLimitedDPOTrainer


def run(ctx: StageContext) -> dict[str, Any]:
    from datasets import Dataset

    from ..data.loading import load_splits

    spec, args = ctx.spec, ctx.spec.args
    source = model_source(spec.inputs[0])
    tokenizer = load_tokenizer(spec, source, args["template"])
    rows, held_out, data_source = load_splits(ctx.stage.dataset, "preference")

    def pairs(rows_):
        prompts = [render_prompt(tokenizer, args["template"], r["prompt"]) for r in rows_]
        data = {"prompt": prompts, "chosen": [r["chosen"] for r in rows_], "rejected": [r["rejected"] for r in rows_]}
        if args["group_by_length"]:  # tokens of the longer sequence of each pair, for the length-grouped sampler
            n = {k: [len(ids) for ids in tokenizer(v, add_special_tokens=False)["input_ids"]] for k, v in data.items()}
            data["length"] = [p + max(c, r) for p, c, r in zip(n["prompt"], n["chosen"], n["rejected"])]
        return Dataset.from_dict(data)

    dataset = pairs(rows)
    log.info("[%s] %d preference pairs from %s", spec.name, len(dataset), data_source)
    trainer_cls, config_cls = ctx.backend.dpo_classes()
    config = training_config(ctx, config_cls, dpo_config_extra(args, deepspeed_file(ctx)))
    model = load_model(spec, source, args["precision"])  # after the arguments: ZeRO-3 loads it sharded
    check_adapter_fits(spec, model)
    trainer = with_prompt_limit(trainer_cls, args["max_prompt_length"])(
        model=model,
        ref_model=None,
        args=config,
        train_dataset=dataset,
        eval_dataset=pairs(held_out) if held_out and args["do_eval"] else None,
        peft_config=build_peft_config(spec.peft),
        **{ctx.backend.dpo_tokenizer_kwarg: tokenizer},
        **ctx.backend.trainer_kwargs(args),
    )
    # with an adapter TRL keeps no second model: the reference is the policy with its adapter disabled
    reference = "policy with adapter disabled" if trainer.ref_model is None else "separate frozen copy"
    log.info("[%s] reference model: %s", spec.name, reference)
    with completion_only_lm_head(ctx.backend.device):
        metrics = train_and_save(ctx, trainer, tokenizer, ("loss", "rewards/accuracies", "rewards/margins"))
    return {**metrics, "reference_model": reference}


def dpo_config_extra(args: dict[str, Any], deepspeed: str | None) -> dict[str, Any]:
    """DPOConfig keywords beyond the common training arguments."""
    return dict(
        beta=args["beta"],
        loss_type=args["loss_type"],
        label_smoothing=args["label_smoothing"],
        max_length=args["max_length"],
        max_prompt_length=args["max_prompt_length"],
        pad_to_multiple_of=args["max_length"] if args["pad_to_max"] else None,
        dataset_num_proc=None,
        deepspeed=deepspeed,
        group_by_length=args["group_by_length"],
        **eval_kwargs(args),
    )
