"""ORPO: supervised fine-tuning and preference learning in one stage, without a reference model.

TRL's ORPOTrainer (trl.experimental in 1.16) adds an odds-ratio term, weighted by ``beta`` (the paper's
lambda), to the negative log-likelihood of the chosen answer: it can start from a base model, with no SFT
stage before it. Its pairs are rendered with the stage's template like DPO's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..config.base import NOT_FINGERPRINTED
from ..config.stage import MaxSteps, Template, TrainStageBase
from .kind import PlanContext
from .padding_free import padding_free_field, resolve_padding_free
from .preference import train_without_reference
from .training import ResolvedTraining, TrainingKind, resolve_training


class ORPOStage(TrainStageBase):
    kind: Literal["orpo"] = Field(
        default="orpo", description="Odds Ratio Preference Optimization: SFT and preference in one stage, no reference."
    )
    global_batch_size: int = Field(default=8, ge=1, description="Pairs per optimizer step over all devices.")
    learning_rate: float = Field(
        default=8e-6,
        gt=0,
        description="Peak learning rate (the paper's 8e-6 is for full fine-tuning; LoRA wants more).",
    )
    max_steps: MaxSteps = 1000
    beta: float = Field(
        default=0.1,
        gt=0,
        description="Weight of the odds-ratio term against the chosen answer's NLL (the paper's lambda).",
    )
    max_length: int = Field(default=1024, ge=8, description="Longest prompt + answer; longer prompts are cut first.")
    template: Template = Field(
        default="neural_chat", description="Prompt format the preference prompts are rendered with."
    )
    padding_free: bool | None = padding_free_field()


class ResolvedORPO(ResolvedTraining):
    beta: float
    max_length: int
    padding_free: bool = Field(json_schema_extra=NOT_FINGERPRINTED)

    def orpo_config_extra(self) -> dict[str, Any]:
        """ORPOConfig keywords beyond the common training arguments."""
        return dict(beta=self.beta, max_length=self.max_length, dataset_num_proc=None)


class ORPOKind(TrainingKind):
    name = "orpo"
    sequences_per_sample = 2  # a chosen and a rejected answer a pair
    config = ORPOStage
    data_use = "preference"
    supports_seq2seq = False
    trainer_family = "orpo"

    def resolve(self, p: PlanContext) -> ResolvedORPO:
        stage = p.stage
        return ResolvedORPO(
            **resolve_training(p, stage.template, self.trainer_family),
            beta=stage.beta,
            max_length=stage.max_length,
            padding_free=resolve_padding_free(p, stage.padding_free),
        )

    def run(self, ctx) -> dict[str, Any]:
        args = ctx.args
        return train_without_reference(ctx, self.trainer_family, args.orpo_config_extra())


KIND = ORPOKind()
