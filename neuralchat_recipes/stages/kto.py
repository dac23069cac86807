"""KTO: learning from unpaired examples, each answer marked desirable or not.

TRL's KTOTrainer on ``prompt, completion, label`` rows (the ``kto`` dataset format). Preference pairs can
be used too, split into a desirable and an undesirable example each, but only when asked
(``from_pairs: true``): the two kinds of data say different things. With a LoRA adapter the reference is
the policy with its adapter disabled. The reward gap between desirable and undesirable answers
(``rewards/margins``) is what training should widen.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..config.base import NOT_FINGERPRINTED
from ..config.stage import MaxSteps, Template, TrainStageBase
from .common import load_tokenizer, log, model_source
from .kind import PlanContext
from .padding_free import apply_padding_free, padding_free_field, padding_metrics, resolve_padding_free
from .peft_config import build_peft_config
from .preference import unpaired, unpaired_dataset
from .train_loop import completion_only_lm_head, train_and_save, training_config, training_model
from .training import ResolvedTraining, TrainingKind, resolve_training


class KTOStage(TrainStageBase):
    kind: Literal["kto"] = Field(default="kto", description="Kahneman-Tversky Optimization on unpaired examples.")
    global_batch_size: int = Field(default=8, ge=1, description="Examples per optimizer step over all devices.")
    learning_rate: float = Field(default=5e-7, gt=0, description="Peak learning rate (TRL's default; LoRA wants more).")
    max_steps: MaxSteps = 1000
    beta: float = Field(default=0.1, gt=0, description="How far the policy may move from the reference.")
    desirable_weight: float = Field(
        default=1.0, gt=0, description="Loss weight of desirable examples (raise it when they are fewer)."
    )
    undesirable_weight: float = Field(default=1.0, gt=0, description="Loss weight of undesirable examples.")
    from_pairs: bool = Field(
        default=False,
        description="The dataset holds preference pairs: train on each pair's "
        "chosen answer as desirable and its rejected answer as undesirable.",
    )
    max_length: int = Field(default=1024, ge=8, description="Longest prompt + answer; longer prompts are cut first.")
    template: Template = Field(default="neural_chat", description="Prompt format the prompts are rendered with.")
    padding_free: bool | None = padding_free_field()


class ResolvedKTO(ResolvedTraining):
    beta: float
    desirable_weight: float
    undesirable_weight: float
    from_pairs: bool
    max_length: int
    padding_free: bool = Field(json_schema_extra=NOT_FINGERPRINTED)

    def kto_config_extra(self) -> dict[str, Any]:
        """KTOConfig keywords beyond the common training arguments."""
        return dict(
            beta=self.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
            max_length=self.max_length,
            dataset_num_proc=None,
        )


class KTOKind(TrainingKind):
    name = "kto"
    sequences_per_sample = 2  # an example and the mismatched one of its KL batch
    config = KTOStage
    supports_seq2seq = False
    trainer_family = "kto"
    data_use = "unpaired"  # with from_pairs, preference pairs (datasets below); the shared rule names the fix

    def use_of(self, stage) -> str:
        return "preference" if stage.from_pairs else "unpaired"

    def resolve(self, p: PlanContext) -> ResolvedKTO:
        stage = p.stage
        return ResolvedKTO(
            **resolve_training(p, stage.template, self.trainer_family),
            beta=stage.beta,
            desirable_weight=stage.desirable_weight,
            undesirable_weight=stage.undesirable_weight,
            from_pairs=stage.from_pairs,
            max_length=stage.max_length,
            padding_free=resolve_padding_free(p, stage.padding_free),
        )

    def run(self, ctx) -> dict[str, Any]:
        from ..data.loading import data_cache, load_training_rows

        args = ctx.args
        source = model_source(ctx.inputs[0])
        tokenizer = load_tokenizer(ctx.model, source, args.template, args.default_system)
        use = "preference" if args.from_pairs else "unpaired"
        rows, held_out, data_source, mix = load_training_rows(ctx.stage, use, data_cache(ctx.recipe.output_root))
        if args.from_pairs:
            rows, held_out = unpaired(rows), unpaired(held_out) if held_out else None
        dataset = unpaired_dataset(rows, tokenizer, args.template)
        log.info("[%s] %d examples from %s (%d desirable)", ctx.name, len(dataset), data_source, sum(dataset["label"]))
        trainer_cls, config_cls = ctx.device.trainer(self.trainer_family)
        config = training_config(ctx, config_cls, args.kto_config_extra())
        model = training_model(ctx, source)
        padding = apply_padding_free(ctx, model)
        with completion_only_lm_head(ctx.device):
            trainer = trainer_cls(
                model=model,
                ref_model=None,
                args=config,
                train_dataset=dataset,
                eval_dataset=unpaired_dataset(held_out, tokenizer, args.template)
                if held_out and args.do_eval
                else None,
                processing_class=tokenizer,
                peft_config=build_peft_config(args.peft),
                **ctx.device.trainer_kwargs(args.device_args),
            )
            metrics = train_and_save(
                ctx, trainer, tokenizer, ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins")
            )
        return {**metrics, **padding_metrics(padding, model), **({"mix": mix} if mix else {})}


KIND = KTOKind()
