"""DPO: TRL's DPOTrainer on preference rows, on top of the upstream model.

With a LoRA adapter the reference model is the policy with its adapter disabled (TRL does
that when it is given a peft_config and no ref_model), so no second copy of the weights is
loaded. Prompts longer than ``max_prompt_length`` keep their end; ``pad_to_max`` pads every
batch to ``max_length`` (static shapes for Gaudi).
"""

from __future__ import annotations

from typing import Any

from . import StageContext
from .common import ready_to_train, completion_only_lm_head, deepspeed_file, load_model, load_tokenizer, log, model_source, render_prompt, train_and_save, training_config, eval_kwargs
from .peft_config import build_peft_config


def dpo_trainer_class(trainer_cls, max_prompt_length: int):
    """A DPOTrainer subclass that cuts tokenized prompts to their last max_prompt_length tokens, and
    scores the reference (precompute_ref_log_probs) on pairs sorted by length, timed."""

    class PromptLimitedDPOTrainer(trainer_cls):
        ref_precompute_s = 0.0

        def _prepare_dataset(self, dataset, *a, **kw):
            dataset = super()._prepare_dataset(dataset, *a, **kw)
            if "prompt_ids" not in dataset.column_names:
                return dataset  # older TRL (optimum-habana) applies max_prompt_length itself
            return dataset.map(lambda ex: {"prompt_ids": ex["prompt_ids"][-max_prompt_length:]})

        def _precompute_ref_logps(self, dataset, name, batch_size):
            """TRL scores the pairs in dataset order, each batch padded to its longest sequence; sorted by
            length there is little padding (the benchmark's 64 pairs: ~26 s unsorted, 14 s sorted)."""
            import os
            import time
            from unittest import mock

            import torch

            t0 = time.perf_counter()
            columns = ("prompt_ids", "chosen_ids", "rejected_ids")
            # its data loader draws a seed from the global RNG: fork it, so the training order stays the same
            # with or without this pass
            # (and its progress bar is TRL's own tqdm: our progress lines are the stage's)
            with torch.random.fork_rng(devices=[]), mock.patch.dict(os.environ, {"TQDM_DISABLE": "1"}):
                if not all(c in dataset.column_names for c in columns):
                    scored = super()._precompute_ref_logps(dataset, name, batch_size)
                else:
                    lengths = [len(p) + max(len(c), len(r)) for p, c, r in zip(*(dataset[c] for c in columns))]
                    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
                    back = sorted(range(len(order)), key=order.__getitem__)
                    scored = super()._precompute_ref_logps(dataset.select(order), name, batch_size).select(back)
            self.ref_precompute_s += time.perf_counter() - t0
            return scored

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
    ready_to_train(ctx, model)
    with completion_only_lm_head(ctx.backend.device):  # the trainer scores the reference while it is built
        trainer = dpo_trainer_class(trainer_cls, args["max_prompt_length"])(
            model=model,
            ref_model=None,
            args=config,
            train_dataset=dataset,
            eval_dataset=pairs(held_out) if held_out and args["do_eval"] else None,
            peft_config=build_peft_config(spec.peft),
            **{ctx.backend.dpo_tokenizer_kwarg: tokenizer},
            **ctx.backend.trainer_kwargs(args),
        )
        # the plan's reference (adapter disabled, or scored before training: no second model), unless this TRL
        # kept a frozen copy after all
        reference = "frozen copy of the input model" if trainer.ref_model is not None else args["reference_model"]
        extra: dict[str, Any] = {"reference_model": reference}
        if trainer.ref_precompute_s:  # (older TRL, as on Gaudi, scores the reference inside train())
            extra["reference_scored_before_training_s"] = round(trainer.ref_precompute_s, 2)
            log.info("[%s] reference log-probs of %d pairs computed in %.1fs, before training", spec.name,
                     len(dataset), trainer.ref_precompute_s)
        log.info("[%s] reference model: %s", spec.name, reference)
        metrics = train_and_save(ctx, trainer, tokenizer, ("loss", "rewards/accuracies", "rewards/margins"))
    return {**metrics, **extra}


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
        precompute_ref_log_probs=args["precompute_ref_log_probs"],
        include_num_input_tokens_seen="non_padding",  # prompt + chosen and prompt + rejected, without padding
        **eval_kwargs(args),
    )
