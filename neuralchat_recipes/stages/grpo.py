"""GRPO with verifiable rewards: the policy samples several answers per prompt and learns from their rewards.

TRL's GRPOTrainer generates with the model itself (no vLLM: it runs on a CPU or one GPU), scores every
completion with the stage's reward functions (stages/rewards.py: exact match, the final number, a format
regex, unit tests in the sandbox, or a trained reward model from an earlier ``reward`` stage), and moves
the policy towards the completions that scored above their group's mean. Prompts and reference answers
come from conversations (each one's last assistant turn is the reference) or HumanEval-format problems.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config.base import NOT_FINGERPRINTED, StrictModel
from ..config.stage import MaxSteps, Template, TrainStageBase
from .common import load_tokenizer, log, model_source, render_prompt
from .kind import PlanContext
from .peft_config import build_peft_config
from .rewards import REWARDS
from .train_loop import train_and_save, training_config, training_model
from .training import ResolvedTraining, TrainingKind, resolve_training


class RewardSpec(StrictModel):
    name: str = Field(description=f"A reward function: {', '.join(REWARDS)} (stages/rewards.py).")
    weight: float = Field(default=1.0, description="Its weight in the total reward.")
    pattern: str | None = Field(default=None, description="regex: the pattern a whole completion must match.")
    stage: str | None = Field(default=None, description="reward_model: the earlier `reward` stage whose model scores.")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in REWARDS:
            close = difflib.get_close_matches(name, list(REWARDS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"no reward function {name!r}; {hint}known: {', '.join(REWARDS)}")
        return name

    @model_validator(mode="after")
    def _settings(self) -> RewardSpec:
        need = REWARDS[self.name].get("needs")
        if need and getattr(self, need) is None:
            raise ValueError(f"reward {self.name!r} needs `{need}`")
        return self


class GRPOStage(TrainStageBase):
    kind: Literal["grpo"] = Field(
        default="grpo", description="Group Relative Policy Optimization with reward functions."
    )
    global_batch_size: int = Field(
        default=8, ge=1, description="Completions per optimizer step over all devices (prompts x num_generations)."
    )
    learning_rate: float = Field(default=1e-6, gt=0, description="Peak learning rate (TRL's default; LoRA wants more).")
    max_steps: MaxSteps = 1000
    rewards: list[RewardSpec] = Field(min_length=1, description="Reward functions and their weights.")
    num_generations: int = Field(default=8, ge=2, description="Completions sampled per prompt (the group).")
    max_completion_length: int = Field(default=256, ge=1, description="Tokens generated per completion.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the completions.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling threshold of the completions.")
    beta: float = Field(
        default=0.0, ge=0, description="KL penalty towards the input model (0: none, and no reference is kept)."
    )
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo"] = Field(
        default="dapo", description="How token losses are aggregated (TRL's names)."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        default="group",
        description="Divide advantages by the reward's standard deviation in the group, the batch, or not at all.",
    )
    template: Template = Field(default="neural_chat", description="Prompt format the prompts are rendered with.")

    @model_validator(mode="after")
    def _groups_fit_the_batch(self) -> GRPOStage:
        if self.global_batch_size % self.num_generations:
            raise ValueError(
                f"`global_batch_size` ({self.global_batch_size}) counts completions and must be a "
                f"multiple of `num_generations` ({self.num_generations}): every prompt's group is "
                f"scored together; e.g. `global_batch_size={self.num_generations * 2}`"
            )
        return self


class ResolvedGRPO(ResolvedTraining):
    rewards: list[RewardSpec]
    num_generations: int
    max_completion_length: int
    temperature: float
    top_p: float
    beta: float
    loss_type: str
    scale_rewards: str
    allow_unsandboxed_code: bool = Field(json_schema_extra=NOT_FINGERPRINTED)

    def grpo_config_extra(self) -> dict[str, Any]:
        """GRPOConfig keywords beyond the common training arguments."""
        return dict(
            num_generations=self.num_generations,
            max_completion_length=self.max_completion_length,
            temperature=self.temperature,
            top_p=self.top_p,
            beta=self.beta,
            loss_type=self.loss_type,
            scale_rewards=self.scale_rewards,
            reward_weights=[r.weight for r in self.rewards],
            log_completions=False,
        )


class GRPOKind(TrainingKind):
    name = "grpo"
    config = GRPOStage
    supports_seq2seq = False
    trainer_family = "grpo"

    def use_of(self, stage) -> str:
        return "code" if stage.dataset.format == "humaneval" else "sft"

    def rules(self, recipe, name: str, stage) -> list[str]:
        from ..graph import earlier, produces

        problems = super().rules(recipe, name, stage)
        code = stage.dataset.format == "humaneval"
        for i, spec in enumerate(stage.rewards):
            key = f"`{name}.rewards[{i}]` ({spec.name})"
            columns = REWARDS[spec.name]["columns"]
            if "reference" in columns and code:
                problems.append(
                    f"{key}: needs reference answers, and HumanEval problems have tests instead; use `code_tests`"
                )
            if "test" in columns and not code:
                problems.append(f"{key}: runs a problem's unit tests; give `{name}.dataset` a HumanEval-format dataset")
            trained_earlier = (
                spec.stage in earlier(recipe, name) and produces(recipe.stages[spec.stage]) == "reward_model"
            )
            if spec.name == "reward_model" and not trained_earlier:
                rewarders = [n for n in earlier(recipe, name) if produces(recipe.stages[n]) == "reward_model"]
                problems.append(
                    f"{key}: `stage` = {spec.stage!r} is not an earlier reward stage; earlier reward "
                    f"stages: {', '.join(rewarders) or 'none (add a `reward` stage before it)'}"
                )
        return problems

    def extra_inputs(self, recipe, name, stage, upstream, by_name):
        from ..graph import stage_input

        return [stage_input(by_name[r.stage]) for r in stage.rewards if r.name == "reward_model" and r.stage in by_name]

    def resolve(self, p: PlanContext) -> ResolvedGRPO:
        s = p.stage
        return ResolvedGRPO(
            **resolve_training(p, s.template, self.trainer_family),
            rewards=s.rewards,
            num_generations=s.num_generations,
            max_completion_length=s.max_completion_length,
            temperature=s.temperature,
            top_p=s.top_p,
            beta=s.beta,
            loss_type=s.loss_type,
            scale_rewards=s.scale_rewards,
            allow_unsandboxed_code=p.recipe.allow_unsandboxed_code,
        )

    def runs_generated_code(self, args) -> bool:
        return any(r.name == "code_tests" for r in args.rewards)

    def run(self, ctx) -> dict[str, Any]:
        from datasets import Dataset

        from ..data.loading import data_cache, load_training_rows
        from .rewards import build

        args = ctx.args
        source = model_source(ctx.inputs[0])
        tokenizer = load_tokenizer(ctx.model, source, args.template, args.default_system)
        code = ctx.stage.dataset.format == "humaneval"
        use = "code" if code else "sft"
        rows, _, data_source, mix = load_training_rows(ctx.stage, use, data_cache(ctx.recipe.output_root))
        if code:
            data = {
                "prompt": [r["prompt"] for r in rows],
                "test": [r["test"] for r in rows],
                "entry_point": [r["entry_point"] for r in rows],
            }
        else:
            last = [max(i for i, m in enumerate(r["messages"]) if m["role"] == "assistant") for r in rows]
            data = {
                "prompt": [render_prompt(tokenizer, args.template, r["messages"][:i]) for r, i in zip(rows, last)],
                "reference": [r["messages"][i]["content"] for r, i in zip(rows, last)],
            }
        dataset = Dataset.from_dict(data)
        by_stage = {i.stage: i.output_dir for i in ctx.inputs[1:]}
        rewards = [build(spec, by_stage.get(spec.stage), args.allow_unsandboxed_code) for spec in args.rewards]
        log.info(
            "[%s] %d prompts from %s, %d completions each, rewarded by %s",
            ctx.name,
            len(dataset),
            data_source,
            args.num_generations,
            ", ".join(f"{r.name} x{r.weight:g}" for r in args.rewards),
        )
        trainer_cls, config_cls = ctx.device.trainer(self.trainer_family)
        config = training_config(ctx, config_cls, args.grpo_config_extra())
        model = training_model(ctx, source)
        trainer = trainer_cls(
            model=model,
            reward_funcs=rewards,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=build_peft_config(args.peft),
            **ctx.device.trainer_kwargs(args.device_args),
        )
        metrics = train_and_save(ctx, trainer, tokenizer, ("loss", "reward", "kl"))
        return {**metrics, **({"mix": mix} if mix else {})}


KIND = GRPOKind()
