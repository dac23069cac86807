"""CPO and SimPO: reference-free preference losses on the policy's own (length-normalised) log-likelihoods.

TRL's CPOTrainer (trl.experimental in 1.16): ``loss_type`` sigmoid/hinge/ipo is CPO (with a behaviour-cloning
term on the chosen answer, ``cpo_alpha``); ``simpo`` is SimPO (average log-probability per token, a target
margin ``simpo_gamma``, no behaviour cloning); ``alphapo`` reshapes SimPO's reward. ``stage/simpo.yaml`` is
this kind with ``loss_type: simpo``.
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


class CPOStage(TrainStageBase):
    kind: Literal["cpo"] = Field(
        default="cpo", description="Contrastive Preference Optimization / SimPO: reference-free preference learning."
    )
    global_batch_size: int = Field(default=8, ge=1, description="Pairs per optimizer step over all devices.")
    learning_rate: float = Field(
        default=1e-6,
        gt=0,
        description="Peak learning rate (SimPO's papers use 3e-7..1e-6 for full fine-tuning; LoRA wants more).",
    )
    max_steps: MaxSteps = 1000
    loss_type: Literal["sigmoid", "hinge", "ipo", "simpo", "alphapo"] = Field(
        default="sigmoid",
        description="sigmoid / hinge / ipo: CPO; simpo: SimPO (length-normalised, target margin); "
        "alphapo: SimPO with AlphaPO's reward shape.",
    )
    beta: float = Field(
        default=0.1, gt=0, description="Inverse temperature of the preference loss (SimPO's paper: 2.0-2.5)."
    )
    cpo_alpha: float = Field(
        default=1.0,
        ge=0,
        description="Weight of the behaviour-cloning NLL on the chosen answer (CPO); SimPO uses none (set 0).",
    )
    simpo_gamma: float = Field(default=0.5, ge=0, description="SimPO's target reward margin (loss_type simpo).")
    label_smoothing: float = Field(
        default=0.0, ge=0, lt=0.5, description="Conservative label smoothing (sigmoid loss)."
    )
    max_length: int = Field(default=1024, ge=8, description="Longest prompt + answer; longer prompts are cut first.")
    template: Template = Field(
        default="neural_chat", description="Prompt format the preference prompts are rendered with."
    )
    padding_free: bool | None = padding_free_field()


class ResolvedCPO(ResolvedTraining):
    loss_type: str
    beta: float
    cpo_alpha: float
    simpo_gamma: float
    label_smoothing: float
    max_length: int
    padding_free: bool = Field(json_schema_extra=NOT_FINGERPRINTED)

    def cpo_config_extra(self) -> dict[str, Any]:
        """CPOConfig keywords beyond the common training arguments."""
        return dict(
            loss_type=self.loss_type,
            beta=self.beta,
            cpo_alpha=self.cpo_alpha,
            simpo_gamma=self.simpo_gamma,
            label_smoothing=self.label_smoothing,
            max_length=self.max_length,
            dataset_num_proc=None,
        )


class CPOKind(TrainingKind):
    name = "cpo"
    sequences_per_sample = 2  # a chosen and a rejected answer a pair
    config = CPOStage
    data_use = "preference"
    supports_seq2seq = False
    trainer_family = "cpo"

    def resolve(self, p: PlanContext) -> ResolvedCPO:
        stage = p.stage
        return ResolvedCPO(
            **resolve_training(p, stage.template, self.trainer_family),
            loss_type=stage.loss_type,
            beta=stage.beta,
            cpo_alpha=stage.cpo_alpha,
            simpo_gamma=stage.simpo_gamma,
            label_smoothing=stage.label_smoothing,
            max_length=stage.max_length,
            padding_free=resolve_padding_free(p, stage.padding_free),
        )

    def run(self, ctx) -> dict[str, Any]:
        args = ctx.args
        return train_without_reference(ctx, self.trainer_family, args.cpo_config_extra(), f" ({args.loss_type} loss)")


KIND = CPOKind()
