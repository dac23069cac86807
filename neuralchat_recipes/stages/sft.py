"""SFT: the dataset's rows rendered with the stage's template, prompt tokens masked from the loss.

Three trainers, one per data layout:
- unpacked samples: TRL's SFTTrainer (batches padded to their longest sample); on devices whose TRL
  classes follow an older API (optimum-habana) the plain Trainer with our collator, since its
  GaudiSFTTrainer would re-collate pre-tokenized samples and lose the prompt masking;
- packed samples (``packing``, ITREX --dataset_concatenation): the HF Trainer on blocks of whole
  samples, each attending only to itself (per-sample causal attention where the device allows it, else a
  block-diagonal mask; data/packing.py), since TRL's packing does not isolate samples with sdpa/eager
  attention; also LLaMA-Adapter, whose wrapper TRL's fused loss bypasses;
- seq2seq models (FLAN-T5): the HF Seq2SeqTrainer (ITREX finetune_seq2seq.py).
Tokenized data is cached under ``<output_root>/cache/tokenized`` by a key holding the data,
tokenizer, template and every preprocessing setting. The adapter (or full weights), tokenizer
and chat template are saved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config.base import NOT_FINGERPRINTED
from ..config.stage import VIRTUAL_TOKEN_METHODS, Epochs, Task, Template, TrainStageBase
from .common import SettingError, StageError, load_model, load_tokenizer, log, model_source, render_prompt
from .kind import PlanContext
from .peft_config import build_peft_config
from .train_loop import completion_only_lm_head, ready_to_train, train_and_save, training_config
from .training import ResolvedTraining, TrainingKind, resolve_training

# ITREX's --task picks the prompt format when a recipe does not name one (chat: the model's own chat template) ...
TASK_TEMPLATES = {
    "completion": "alpaca",
    "chat": "tokenizer",
    "summarization": "summarization",
    "code-generation": "alpaca",
}
# ... and how the fine-tune is judged (ITREX: lm-eval truthfulqa_mc for completion and chat, ROUGE for
# summarization, HumanEval pass@1 for code generation).
TASK_DEFAULT_EVAL = {
    "completion": "truthfulqa_mc",
    "chat": "truthfulqa_mc",
    "summarization": "rouge",
    "code-generation": "pass@1",
}

# TRL's SFTTrainer computes the loss through a fused LM head patched onto the base model, which
# PEFT's adaption-prompt wrapper (LLaMA-Adapter) bypasses; those adapters train with the HF Trainer.
PLAIN_TRAINER_METHODS = {"llama_adapter"}


class SFTStage(TrainStageBase):
    kind: Literal["sft"] = Field(default="sft", description="Supervised fine-tuning.")
    global_batch_size: int = Field(
        default=8,
        ge=1,
        description="Samples per optimizer step over all devices; per-device batch and accumulation are derived.",
    )
    learning_rate: float = Field(default=1e-4, gt=0, description="Peak learning rate.")
    num_train_epochs: Epochs = 3
    task: Task = Field(
        default="completion",
        description="ITREX task: completion (instructions, alpaca prompt), chat (multi-turn, the model's chat "
        "template), "
        "summarization (article -> summary) or code-generation; picks the default template and evaluation.",
    )
    max_seq_length: int = Field(default=512, ge=8, description="Longest tokenized sample (prompt + response).")
    max_prompt_length: int | None = Field(
        default=None,
        ge=1,
        description="Longest prompt part (ITREX max_source_length); longer prompts are cut from the left.",
    )
    packing: bool = Field(
        default=False,
        description="Pack whole samples into max_seq_length blocks (ITREX --dataset_concatenation); each sample "
        "attends only to itself (per-sample causal attention or a block-diagonal mask; positions restart per sample).",
    )
    pad_to_max: bool | None = Field(
        default=None,
        description="Pad every batch to max_seq_length (static shapes, ITREX pad_max); null follows the hardware "
        "profile.",
        json_schema_extra=NOT_FINGERPRINTED,
    )
    loss_on: Literal["assistant", "all"] = Field(
        default="assistant", description="`assistant` masks prompt tokens from the loss; `all` trains on every token."
    )
    group_by_length: bool = Field(default=False, description="Batch samples of similar length together.")
    template: Template | None = Field(
        default=None,
        description="Prompt format the rows are rendered with: neural_chat (### System/User/Assistant), alpaca, "
        "chatml, "
        "llama2, qa (Question/Answer), tokenizer (the tokenizer's chat template), summarization, plain; null picks "
        "from `task`.",
    )

    @property
    def resolved_template(self) -> str:
        return self.template or TASK_TEMPLATES[self.task]

    @property
    def default_eval(self) -> str:
        return TASK_DEFAULT_EVAL[self.task]

    @model_validator(mode="after")
    def _packing_fits_the_adapter(self) -> SFTStage:
        if self.packing and self.peft.method in VIRTUAL_TOKEN_METHODS:
            raise ValueError(
                f"`packing` is not supported with peft method {self.peft.method!r}: its virtual tokens would be shared "
                "by every sample of a packed block; set `sft.packing=false` (or use lora / none)"
            )
        return self


class ResolvedSFT(ResolvedTraining):
    task: str
    default_eval: str
    max_seq_length: int
    max_prompt_length: int | None
    packing: bool
    loss_on: str
    group_by_length: bool
    pad_to_max: bool = Field(json_schema_extra=NOT_FINGERPRINTED)

    def uses_plain_trainer(self, device) -> bool:
        """Packed blocks, LLaMA-Adapter, and devices whose TRL takes no pre-tokenized samples use the HF
        (or Gaudi) Trainer with our collators; the rest TRL's SFTTrainer."""
        return self.packing or self.peft.method in PLAIN_TRAINER_METHODS or not device.sft_with_trl

    def trl_config_extra(self) -> dict[str, Any]:
        """SFTConfig keywords beyond the common training arguments."""
        return dict(
            max_length=self.max_seq_length,
            packing=False,
            pad_to_multiple_of=self.max_seq_length if self.pad_to_max else None,
            group_by_length=self.group_by_length,
            dataset_num_proc=None,
            include_num_input_tokens_seen="non_padding",
        )

    def plain_config_extra(self) -> dict[str, Any]:
        """TrainingArguments keywords of the plain-Trainer path beyond the common ones."""
        return dict(
            group_by_length=self.group_by_length and not self.packing,
            # the packed path's 4D mask cannot be summed into a token count: count all, scale by the real share
            include_num_input_tokens_seen="all" if self.packing else "non_padding",
        )


class SFTKind(TrainingKind):
    name = "sft"
    config = SFTStage

    def resolve(self, p: PlanContext) -> ResolvedSFT:
        stage, hw = p.stage, p.recipe.hardware
        return ResolvedSFT(
            **resolve_training(p, stage.resolved_template),
            task=stage.task,
            default_eval=stage.default_eval,
            max_seq_length=stage.max_seq_length,
            max_prompt_length=stage.max_prompt_length,
            packing=stage.packing,
            loss_on=stage.loss_on,
            group_by_length=stage.group_by_length,
            pad_to_max=hw.static_shapes if stage.pad_to_max is None else stage.pad_to_max,
        )

    def run(self, ctx) -> dict[str, Any]:
        return run(ctx)


KIND = SFTKind()


def run(ctx) -> dict[str, Any]:
    from ..data.loading import load_splits

    args = ctx.args
    source = model_source(ctx.inputs[0])
    tokenizer = load_tokenizer(ctx.model, source, args.template, args.default_system)
    rows, held_out, data_source = load_splits(ctx.stage.dataset, "sft")
    if not args.do_eval:
        held_out = None
    if ctx.model.architecture == "seq2seq":
        return _run_seq2seq(ctx, source, tokenizer, rows, held_out)
    counts: dict[str, dict[str, int]] = {}
    examples = _tokenized(ctx, tokenizer, rows, "train", counts)
    eval_examples = _tokenized(ctx, tokenizer, held_out, "eval", counts) if held_out else None
    log.info(
        "[%s] %d training samples from %s (%d tokens)%s",
        ctx.name,
        len(examples),
        data_source,
        sum(len(e["input_ids"]) for e in examples),
        f", {len(eval_examples)} held out" if eval_examples else "",
    )
    if args.uses_plain_trainer(ctx.device):
        metrics = _run_plain_trainer(ctx, source, tokenizer, examples, eval_examples)
    else:
        metrics = _run_trl(ctx, source, tokenizer, examples, eval_examples)
    return {**metrics, "rows": counts}


def _run_trl(ctx, source: str, tokenizer, examples, eval_examples) -> dict[str, Any]:
    """TRL's SFTTrainer on pre-tokenized samples (batches padded to their longest sample)."""
    from datasets import Dataset

    args = ctx.args
    trainer_cls, config_cls = ctx.device.trainer("sft")
    # training arguments first: with ZeRO-3 they make from_pretrained load the weights already sharded
    config = training_config(ctx, config_cls, args.trl_config_extra())
    model = load_model(ctx.model, source, args.precision)
    ready_to_train(ctx, model)
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(examples),
        eval_dataset=Dataset.from_list(eval_examples) if eval_examples else None,
        processing_class=tokenizer,
        peft_config=build_peft_config(args.peft),
        **ctx.device.trainer_kwargs(args.device_args),
    )
    with completion_only_lm_head(ctx.device):
        return train_and_save(ctx, trainer, tokenizer)


# Above these shares of a part's rows, cutting and dropping rows is worth a warning (a max_seq_length too short)
WARN_TRUNCATED_SHARE = 0.10
WARN_DROPPED_SHARE = 0.01


def _tokenized(ctx, tokenizer, rows, part: str, counts: dict[str, dict[str, int]]) -> list[dict[str, list[int]]]:
    """Tokenize rows, or read them from the tokenized-data cache; ``counts[part]`` receives how many rows were
    truncated and dropped (logged, with a warning above WARN_*_SHARE)."""
    from .. import ENGINE_FINGERPRINT_VERSION
    from ..data.tokenize import tokenize_cached, tokenize_sft, tokenizer_identity
    from ..plan import data_identity

    args = ctx.args
    key = {
        "engine": ENGINE_FINGERPRINT_VERSION,
        "part": part,
        "dataset": data_identity(ctx.spec.datasets["dataset"]),
        "rows": len(rows),
        "tokenizer": tokenizer_identity(tokenizer),
        "template": args.template,
        "max_seq_length": args.max_seq_length,
        "max_prompt_length": args.max_prompt_length,
        "loss_on": args.loss_on,
    }
    root = Path(ctx.recipe.output_root).expanduser() / "cache" / "tokenized"
    counted: dict[str, int] = {}
    examples, hit = tokenize_cached(
        root,
        key,
        lambda: tokenize_sft(
            rows, tokenizer, args.template, args.max_seq_length, args.max_prompt_length, args.loss_on, counted
        ),
        counted,
    )
    if hit:
        log.info("[%s] tokenized %s data read from the cache", ctx.name, part)
    counts[part] = counted
    truncated, dropped = counted.get("truncated", 0), counted.get("dropped", 0)
    if truncated or dropped:
        heavy = truncated > WARN_TRUNCATED_SHARE * len(rows) or dropped > WARN_DROPPED_SHARE * len(rows)
        log.log(
            logging.WARNING if heavy else logging.INFO,
            "[%s] %s%d of %d %s rows cut to max_seq_length=%d%s, %d dropped (no answer token left to learn from)%s",
            ctx.name,
            "warning: " if heavy else "",
            truncated,
            len(rows),
            part,
            args.max_seq_length,
            f" / max_prompt_length={args.max_prompt_length}" if args.max_prompt_length else "",
            dropped,
            f"; raise `{ctx.name}.max_seq_length` if that is more than you meant" if heavy else "",
        )
    if not examples:
        raise SettingError(
            f"`{ctx.name}.dataset`: no {part} sample has a token to learn from after truncation to "
            f"max_seq_length={args.max_seq_length}; raise `{ctx.name}.max_seq_length`"
        )
    return examples


def _run_plain_trainer(ctx, source: str, tokenizer, examples, eval_examples) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq

    from ..data.packing import (
        PackedCollator,
        labels_of,
        non_pad_fraction,
        pack,
        supports_labelled_logits,
        use_packed_attention,
    )

    args = ctx.args
    trainer_cls, config_cls = ctx.device.trainer("trainer")
    config = training_config(ctx, config_cls, args.plain_config_extra())
    model = load_model(ctx.model, source, args.precision)
    ready_to_train(ctx, model)
    size = args.max_seq_length
    pad_to = size if args.pad_to_max else None
    extra: dict[str, Any] = {}
    if args.packing:
        import inspect

        if "position_ids" not in inspect.signature(model.forward).parameters:
            raise StageError(
                f"`{ctx.name}.packing`: {type(model).__name__} takes no position_ids, so packed samples "
                f"cannot be kept apart; set `{ctx.name}.packing=false`"
            )
        train, held = pack(examples, size), pack(eval_examples, size) if eval_examples else None
        eager = getattr(model.config, "_attn_implementation", "sdpa") == "eager"
        # per-sample causal attention where the model runs on transformers' attention interface and the device
        # allows it; a block-diagonal mask otherwise
        segments = ctx.device.can("per_sample_attention") and use_packed_attention(model)
        # the LM head and loss only where a label is predicted (~20-40% of positions are prompt tokens);
        # not with static shapes, where the logits' shape must not change from batch to batch
        labelled = not args.pad_to_max and ctx.device.can("labelled_logits") and supports_labelled_logits(model)
        import torch

        collator = PackedCollator(
            tokenizer.pad_token_id,
            pad_to=pad_to,
            mask="segments" if segments else "4d",
            dtype=torch.float32 if eager and not segments else None,
            labelled_logits=labelled,
        )
        lengths = [len(e["input_ids"]) for e in examples]
        micro = args.per_device_train_batch_size
        extra["packing"] = {
            "samples": len(examples),
            "blocks": len(train),
            "isolation": "per-sample causal attention" if segments else "block-diagonal mask",
            "logits": "labelled positions only" if labelled else "every position",
            "non_pad_fraction_packed": round(non_pad_fraction([len(b["input_ids"]) for b in train], micro, pad_to), 4),
            "non_pad_fraction_unpacked": round(non_pad_fraction(lengths, micro, pad_to), 4),
        }
        log.info(
            "[%s] packed %d samples into %d blocks of <= %d tokens: %.1f%% real tokens per batch (%.1f%% unpacked)",
            ctx.name,
            len(examples),
            len(train),
            size,
            100 * extra["packing"]["non_pad_fraction_packed"],
            100 * extra["packing"]["non_pad_fraction_unpacked"],
        )
    else:

        def rows_of(exs):
            return [
                {"input_ids": e["input_ids"], "attention_mask": [1] * len(e["input_ids"]), "labels": labels_of(e)}
                for e in exs
            ]

        train, held = rows_of(examples), rows_of(eval_examples) if eval_examples else None
        collator = DataCollatorForSeq2Seq(
            tokenizer, label_pad_token_id=-100, padding="max_length" if args.pad_to_max else True, max_length=pad_to
        )
    peft_config = build_peft_config(args.peft)
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(held) if held else None,
        processing_class=tokenizer,
        data_collator=collator,
        **ctx.device.trainer_kwargs(args.device_args),
    )
    # (the model's own loss, on the labelled positions: TRL's fused, tiled LM head measured 12% slower on packed
    # blocks here, bench/)
    metrics = train_and_save(ctx, trainer, tokenizer)
    metrics.update(extra)
    if args.packing and collator.fraction is not None:
        metrics["packing"]["non_pad_fraction_seen"] = round(collator.fraction, 4)
        metrics["tokens_seen"] = int(metrics["tokens_seen"] * collator.fraction)
    return metrics


def _run_seq2seq(ctx, source: str, tokenizer, rows, held_out) -> dict[str, Any]:
    """Encoder-decoder SFT (ITREX finetune_seq2seq.py): prompt -> encoder, answer -> labels."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    args = ctx.args
    max_prompt = args.max_prompt_length or args.max_seq_length

    def encode(rows_):
        out = []
        for row in rows_:
            messages = row["messages"]
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompt = render_prompt(tokenizer, args.template, messages[:last])
            enc = tokenizer(prompt, truncation=True, max_length=max_prompt)
            enc["labels"] = tokenizer(messages[last]["content"], truncation=True, max_length=args.max_seq_length)[
                "input_ids"
            ]
            out.append(dict(enc))
        return out

    config = training_config(ctx, Seq2SeqTrainingArguments, {})
    model = load_model(ctx.model, source, args.precision, causal=False)
    peft_config = build_peft_config(args.peft, seq2seq=True)
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    trainer = Seq2SeqTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(encode(rows)),
        eval_dataset=Dataset.from_list(encode(held_out)) if held_out else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        processing_class=tokenizer,
    )
    return train_and_save(ctx, trainer, tokenizer)
