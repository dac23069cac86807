"""Reward model: a sequence-classification head trained on preference pairs to score the chosen answer higher.

TRL's RewardTrainer on prompt / chosen / rejected (rendered with the stage's template). The artifact is a
standalone ``AutoModelForSequenceClassification`` (a LoRA adapter is merged into it at the end, the score
head trained in full): a GRPO stage can reward with it (``rewards: [{name: reward_model, stage: <this>}]``).
Its accuracy on held-out pairs (``do_eval``) is how it is judged.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from ..config.stage import Epochs, Template, TrainStageBase
from .common import load_tokenizer, log, model_source, torch_dtype
from .kind import PlanContext
from .peft_config import build_peft_config
from .preference import pairs_dataset
from .train_loop import ready_to_train, train_and_save, training_config
from .training import ResolvedTraining, TrainingKind, resolve_training


class RewardStage(TrainStageBase):
    kind: Literal["reward"] = Field(default="reward", description="Train a reward model on preference pairs.")
    global_batch_size: int = Field(default=8, ge=1, description="Pairs per optimizer step over all devices.")
    learning_rate: float = Field(default=1e-4, gt=0, description="Peak learning rate.")
    num_train_epochs: Epochs = 1
    max_length: int = Field(default=1024, ge=8, description="Longest prompt + answer.")
    center_rewards_coefficient: float | None = Field(
        default=None, ge=0, description="Pull the mean reward towards 0 with this weight (null: not at all)."
    )
    template: Template = Field(default="neural_chat", description="Prompt format the prompts are rendered with.")


class ResolvedReward(ResolvedTraining):
    max_length: int
    center_rewards_coefficient: float | None

    def reward_config_extra(self) -> dict[str, Any]:
        """RewardConfig keywords beyond the common training arguments."""
        return dict(
            max_length=self.max_length,
            center_rewards_coefficient=self.center_rewards_coefficient,
            dataset_num_proc=None,
        )


class RewardKind(TrainingKind):
    name = "reward"
    sequences_per_sample = 2  # a chosen and a rejected answer a pair
    config = RewardStage
    data_use = "preference"
    supports_seq2seq = False
    quantizes_base = False  # a sequence-classification head on the base: loaded without quantization
    trainer_family = "reward"

    def produces(self, stage) -> str | None:
        return "reward_model"  # scores text; not a model later stages continue from

    def resolve(self, p: PlanContext) -> ResolvedReward:
        stage = p.stage
        return ResolvedReward(
            **resolve_training(p, stage.template, self.trainer_family),
            max_length=stage.max_length,
            center_rewards_coefficient=stage.center_rewards_coefficient,
        )

    def run(self, ctx) -> dict[str, Any]:
        from transformers import AutoModelForSequenceClassification

        from ..data.loading import data_cache, load_training_rows

        args = ctx.args
        source = model_source(ctx.inputs[0])
        tokenizer = load_tokenizer(ctx.model, source, args.template, args.default_system)
        cache = data_cache(ctx.recipe.output_root)
        rows, held_out, data_source, mix = load_training_rows(ctx.stage, "preference", cache)
        dataset = pairs_dataset(rows, tokenizer, args.template)
        log.info("[%s] %d preference pairs from %s", ctx.name, len(dataset), data_source)
        trainer_cls, config_cls = ctx.device.trainer(self.trainer_family)
        config = training_config(ctx, config_cls, args.reward_config_extra())
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=1,
            dtype=torch_dtype(ctx.model, args.precision),
            trust_remote_code=ctx.model.trust_remote_code,
            use_safetensors=None if ctx.model.allow_pickle else True,
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        ready_to_train(ctx, model)
        trainer = trainer_cls(
            model=model,
            args=config,
            train_dataset=dataset,
            eval_dataset=pairs_dataset(held_out, tokenizer, args.template) if held_out and args.do_eval else None,
            processing_class=tokenizer,
            peft_config=build_peft_config(args.peft, task="SEQ_CLS"),
            **ctx.device.trainer_kwargs(args.device_args),
        )
        metrics = train_and_save(ctx, trainer, tokenizer, ("loss", "accuracy", "margin"))
        if args.peft.method != "none" and trainer.is_world_process_zero():
            # a standalone reward model: the adapter merged in, so whoever scores with it needs nothing else
            for item in ctx.final.iterdir():
                if item.name.startswith("adapter_"):
                    item.unlink() if item.is_file() else shutil.rmtree(item)
            trainer.model.merge_and_unload().save_pretrained(str(ctx.final), safe_serialization=True)
        return {**metrics, **({"mix": mix} if mix else {})}


KIND = RewardKind()


def load_scorer(model_dir: str, batch_size: int = 8) -> Callable[[list[str]], list[float]]:
    """The raw scores a reward stage's artifact gives whole texts (rendered prompt + answer), tokenized as
    RewardTrainer tokenized its training pairs: EOS appended and the tokenizer's own special tokens added. The
    head was trained on the hidden state at the last token before padding, so a text without the EOS is scored
    at a position it never saw (on the demo that is the difference between 95% and chance)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = tokenizer.eos_token or ""

    def scores(texts: list[str]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(texts), batch_size):
            chunk = [t if t.endswith(eos) else t + eos for t in texts[start : start + batch_size]]
            batch = tokenizer(chunk, return_tensors="pt", padding=True)
            with torch.no_grad():
                out += model(**batch).logits[:, 0].float().tolist()
        return out

    return scores
