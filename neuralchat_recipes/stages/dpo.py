"""DPO: TRL's DPOTrainer on preference rows, on top of the upstream model.

With a LoRA adapter the reference model is the policy with its adapter disabled (TRL does that when it
is given a peft_config and no ref_model), so no second copy of the weights is loaded; by default the
reference scores every pair once before training. Prompts longer than ``max_prompt_length`` keep their
end; ``pad_to_max`` pads every batch to ``max_length`` (static shapes for Gaudi). Otherwise, where the device
attends per sample, every batch runs padding-free (stages/padding_free.py): its chosen and rejected sequences
side by side in one row, each attending only to itself.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config.base import NOT_FINGERPRINTED
from ..config.stage import MaxSteps, Template, TrainStageBase
from .common import load_tokenizer, log, model_source
from .kind import PlanContext, PlanError
from .padding_free import apply_padding_free, padding_free_field, padding_metrics, resolve_padding_free
from .peft_config import build_peft_config
from .preference import pairs_dataset
from .train_loop import completion_only_lm_head, train_and_save, training_config, training_model
from .training import ResolvedTraining, TrainingKind, resolve_training


@lru_cache(maxsize=1)
def installed_loss_types() -> list[str]:
    """The DPO losses the installed TRL implements, read from its source (no import: validation stays light);
    empty when TRL is not installed or reads differently (then nothing is refused here)."""
    spec = importlib.util.find_spec("trl")
    source = Path(spec.origin).parent / "trainer" / "dpo_trainer.py" if spec and spec.origin else None
    if source is None or not source.is_file():
        return []
    return sorted(set(re.findall(r'loss_type == "(\w+)"', source.read_text(encoding="utf-8"))))


class DPOStage(TrainStageBase):
    kind: Literal["dpo"] = Field(default="dpo", description="Direct Preference Optimization.")
    global_batch_size: int = Field(
        default=8,
        ge=1,
        description="Pairs per optimizer step over all devices; per-device batch and accumulation are derived.",
    )
    learning_rate: float = Field(default=5e-4, gt=0, description="Peak learning rate.")
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
    ] = Field(default="cosine", description="Learning-rate schedule after warmup.")
    max_steps: MaxSteps = 1000
    beta: float = Field(
        default=0.1, gt=0, description="DPO temperature: how far the policy may move from the reference."
    )
    loss_type: str | list[str] = Field(
        default="sigmoid",
        description="DPO loss (TRL's names: sigmoid, hinge, ipo, robust, exo_pair, nca_pair, bco_pair, sppo_hard, aot, "
        "apo_zero, apo_down, discopop, sft, sigmoid_norm ... as the installed TRL has them), or several combined "
        "with `loss_weights` (e.g. MPO: [sigmoid, bco_pair, sft]).",
    )
    loss_weights: list[float] | None = Field(
        default=None, description="Weights of the combined losses (one per loss_type); null: 1 each."
    )
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5, description="Conservative DPO label smoothing.")
    max_length: int = Field(default=1024, ge=8, description="Longest prompt + response.")
    max_prompt_length: int = Field(default=512, ge=1, description="Longest prompt.")
    pad_to_max: bool | None = Field(
        default=None,
        description="Pad every batch to max_length (static shapes); null follows the hardware profile.",
        json_schema_extra=NOT_FINGERPRINTED,
    )
    padding_free: bool | None = padding_free_field()
    template: Template = Field(
        default="neural_chat", description="Prompt format the preference prompts are rendered with."
    )
    group_by_length: bool | None = Field(
        default=None,
        description="Batch pairs of similar length together (less padding: faster on dynamic-shape devices); "
        "null: on unless the hardware profile pads to static shapes.",
    )
    precompute_ref_log_probs: bool | None = Field(
        default=None,
        description="Score every pair under the reference once, in a pass before training (pairs sorted by length), "
        "instead of a reference forward inside every step: lower peak memory (no reference activations on top of "
        "the policy's), no reference copy kept without an adapter, and less work from the second epoch on. "
        "null: on, except where the device runs the reference inside training (Gaudi) and with DeepSpeed.",
        json_schema_extra=NOT_FINGERPRINTED,
    )

    @property
    def resolved_template(self) -> str:
        return self.template

    @field_validator("loss_type")
    @classmethod
    def _installed_loss(cls, value: str | list[str]) -> str | list[str]:
        known = installed_loss_types()
        for loss in [value] if isinstance(value, str) else value:
            if known and loss not in known:
                close = difflib.get_close_matches(loss, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"{loss!r} is not a DPO loss of the installed TRL; {hint}it has: {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _weights_fit(self) -> DPOStage:
        losses = [self.loss_type] if isinstance(self.loss_type, str) else self.loss_type
        if self.loss_weights is not None and len(self.loss_weights) != len(losses):
            raise ValueError(
                f"`loss_weights` has {len(self.loss_weights)} weights for {len(losses)} loss types; give "
                "one per loss (or null for equal weights)"
            )
        return self

    @model_validator(mode="after")
    def _prompt_fits(self) -> DPOStage:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be smaller than max_length ({self.max_length})"
            )
        return self


class ResolvedDPO(ResolvedTraining):
    beta: float
    loss_type: str | list[str]
    loss_weights: list[float] | None
    label_smoothing: float
    max_length: int
    max_prompt_length: int
    pad_to_max: bool = Field(json_schema_extra=NOT_FINGERPRINTED)
    padding_free: bool = Field(json_schema_extra=NOT_FINGERPRINTED)
    group_by_length: bool
    precompute_ref_log_probs: bool = Field(json_schema_extra=NOT_FINGERPRINTED)
    reference_model: str = Field(json_schema_extra=NOT_FINGERPRINTED)

    def dpo_config_extra(self) -> dict[str, Any]:
        """DPOConfig keywords beyond the common training arguments."""
        return dict(
            beta=self.beta,
            loss_type=self.loss_type,
            **({"loss_weights": self.loss_weights} if self.loss_weights is not None else {}),  # Gaudi: absent
            label_smoothing=self.label_smoothing,
            max_length=self.max_length,
            max_prompt_length=self.max_prompt_length,
            pad_to_multiple_of=self.max_length if self.pad_to_max else None,
            dataset_num_proc=None,
            group_by_length=self.group_by_length,
            precompute_ref_log_probs=self.precompute_ref_log_probs,
            include_num_input_tokens_seen="non_padding",  # prompt + chosen and prompt + rejected, without padding
        )


class DPOKind(TrainingKind):
    name = "dpo"
    sequences_per_sample = 2  # a chosen and a rejected answer a pair
    config = DPOStage
    data_use = "preference"
    supports_seq2seq = False

    def resolve(self, p: PlanContext) -> ResolvedDPO:
        stage, hw = p.stage, p.hardware
        common = resolve_training(p, stage.template)
        if (isinstance(stage.loss_type, list) or stage.loss_weights is not None) and not p.device.can(
            "combined_dpo_losses"
        ):
            raise PlanError(
                [
                    f"`{p.name}.loss_type` / `{p.name}.loss_weights`: hardware {hw.name!r} ({hw.device}) trains DPO "
                    "with one loss type; give loss_type a single name and loss_weights null, or run this stage "
                    "with a cpu, cuda or xpu profile"
                ]
            )
        precompute = (
            p.device.can("reference_before_training") and not common["zero_stage"]
            if stage.precompute_ref_log_probs is None
            else stage.precompute_ref_log_probs
        )
        reference = (
            "policy with adapter disabled"
            if stage.peft.method != "none"
            else "input model, scored before training"
            if precompute
            else "frozen copy of the input model"
        )
        pad_to_max = hw.static_shapes if stage.pad_to_max is None else stage.pad_to_max
        return ResolvedDPO(
            **common,
            beta=stage.beta,
            loss_type=stage.loss_type,
            loss_weights=stage.loss_weights,
            label_smoothing=stage.label_smoothing,
            max_length=stage.max_length,
            max_prompt_length=stage.max_prompt_length,
            pad_to_max=pad_to_max,
            padding_free=resolve_padding_free(p, stage.padding_free, pad_to_max),
            group_by_length=not hw.static_shapes if stage.group_by_length is None else stage.group_by_length,
            precompute_ref_log_probs=precompute,
            reference_model=reference,
        )

    def reference_mode(self, resolved) -> str | None:
        if resolved.precompute_ref_log_probs:
            return "precomputed"
        return "adapter_disabled" if resolved.peft.method != "none" else "copy"

    def run(self, ctx) -> dict[str, Any]:
        return run(ctx)


KIND = DPOKind()


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


def run(ctx) -> dict[str, Any]:

    from ..data.loading import data_cache, load_training_rows

    args = ctx.args
    source = model_source(ctx.inputs[0])
    tokenizer = load_tokenizer(ctx.model, source, args.template, args.default_system)
    rows, held_out, data_source, mix = load_training_rows(ctx.stage, "preference", data_cache(ctx.recipe.output_root))

    def pairs(rows_):  # with each pair's length for the length-grouped sampler
        return pairs_dataset(rows_, tokenizer, args.template, with_length=args.group_by_length)

    dataset = pairs(rows)
    log.info("[%s] %d preference pairs from %s", ctx.name, len(dataset), data_source)
    trainer_cls, config_cls = ctx.device.trainer("dpo")
    config = training_config(ctx, config_cls, args.dpo_config_extra())
    model = training_model(ctx, source)  # after the arguments: ZeRO-3 loads it sharded
    padding = apply_padding_free(
        ctx,
        model,
        f"every batch padded to max_length ({args.max_length})"
        if args.pad_to_max
        else "batches padded to their longest sequence",
    )
    with completion_only_lm_head(ctx.device):  # the trainer scores the reference while it is built
        trainer = dpo_trainer_class(trainer_cls, args.max_prompt_length)(
            model=model,
            ref_model=None,
            args=config,
            train_dataset=dataset,
            eval_dataset=pairs(held_out) if held_out and args.do_eval else None,
            peft_config=build_peft_config(args.peft),
            **{ctx.device.dpo_tokenizer_kwarg: tokenizer},
            **ctx.device.trainer_kwargs(args.device_args),
        )
        # the plan's reference (adapter disabled, or scored before training: no second model), unless this TRL
        # kept a frozen copy after all
        reference = "frozen copy of the input model" if trainer.ref_model is not None else args.reference_model
        extra: dict[str, Any] = {
            "reference_model": reference,
            "sample_unit": "pairs",
            **({"mix": mix} if mix else {}),
        }
        if trainer.ref_precompute_s:  # (older TRL, as on Gaudi, scores the reference inside train())
            extra["reference_scored_before_training_s"] = round(trainer.ref_precompute_s, 2)
            log.info(
                "[%s] reference log-probs of %d pairs computed in %.1fs, before training",
                ctx.name,
                len(dataset),
                trainer.ref_precompute_s,
            )
        log.info("[%s] reference model: %s", ctx.name, reference)
        metrics = train_and_save(ctx, trainer, tokenizer, ("loss", "rewards/accuracies", "rewards/margins"))
    # counted after training: the reference's forward passes (scored while the trainer is built) and the policy's
    return {**metrics, **extra, **padding_metrics(padding, model)}
