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

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config.base import NOT_FINGERPRINTED
from ..config.stage import VIRTUAL_TOKEN_METHODS, Epochs, Task, Template, TrainStageBase
from .common import SettingError, load_model, load_tokenizer, log, model_source, render_prompt
from .kind import PlanContext
from .peft_config import build_peft_config
from .train_loop import completion_only_lm_head, train_and_save, training_config, training_model
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
    def _keeps_its_columns(self) -> SFTStage:
        if self.remove_unused_columns:
            raise ValueError(
                "`remove_unused_columns=true` would drop the assistant masks and packing positions the SFT collators "
                "read; leave it false (the seeds' --remove_unused_columns=False)"
            )
        return self

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
            # the samples are tokenized and masked already, and the stage's collator builds labels per batch
            dataset_kwargs={"skip_prepare_dataset": True},
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
        stage, hw = p.stage, p.hardware
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
    args = ctx.args
    source = model_source(ctx.inputs[0])
    tokenizer = load_tokenizer(ctx.model, source, args.template, args.default_system)
    if ctx.model.architecture == "seq2seq":
        from ..data.loading import data_cache, load_splits

        rows, held_out, _ = load_splits(ctx.stage.dataset, "sft", data_cache(ctx.recipe.output_root))
        return _run_seq2seq(ctx, source, tokenizer, rows, held_out if args.do_eval else None)
    data = _prepare(ctx, source, tokenizer)
    if data.streaming:
        log.info("[%s] training samples streamed from %s", ctx.name, data.source)
    else:
        log.info(
            "[%s] %d training samples from %s (%d tokens)%s",
            ctx.name,
            data.train.num_rows,
            data.source,
            data.tokens,
            f", {data.held.num_rows} held out" if data.held is not None else "",
        )
    if args.uses_plain_trainer(ctx.device):
        metrics = _run_plain_trainer(ctx, source, tokenizer, data)
    else:
        metrics = _run_trl(ctx, source, tokenizer, data)
    metrics["rows"] = data.counts
    if data.mix:
        metrics["mix"] = data.mix
    return metrics


def _prepare(ctx, source: str, tokenizer):
    """The stage's tokenized samples (data/sft_data.py), a setting that leaves nothing to learn named."""
    from ..data.sft_data import NothingToLearn, prepare

    args = ctx.args
    own = None
    if args.template != "tokenizer" and any(d.template == "tokenizer" for _, d in ctx.stage.all_datasets):
        own = load_tokenizer(ctx.model, source, "tokenizer", args.default_system)
    try:
        return prepare(ctx, tokenizer, own)
    except NothingToLearn as exc:
        raise SettingError(str(exc)) from None


def _unpacked(samples, keep_length: bool):
    """Only the columns the collator reads (and the length that group_by_length sorts by)."""
    if samples is None:
        return None
    columns = ["input_ids", "assistant_masks", *(["length"] if keep_length else [])]
    return samples.select_columns(columns)


def _run_trl(ctx, source: str, tokenizer, data) -> dict[str, Any]:
    """TRL's SFTTrainer on the tokenized samples (batches padded to their longest sample by our collator: TRL's
    own preparation would map over the whole set again to build labels the collator makes per batch)."""
    from ..data.collate import MaskedCollator

    args = ctx.args
    trainer_cls, config_cls = ctx.device.trainer("sft")
    # training arguments first: with ZeRO-3 they make from_pretrained load the weights already sharded
    config = training_config(ctx, config_cls, {**args.trl_config_extra(), **_stream_arguments(data)})
    model = training_model(ctx, source)
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=_unpacked(data.train, args.group_by_length),
        eval_dataset=_unpacked(data.held, False),
        processing_class=tokenizer,
        data_collator=MaskedCollator(tokenizer.pad_token_id, args.max_seq_length if args.pad_to_max else None),
        peft_config=build_peft_config(args.peft),
        **ctx.device.trainer_kwargs(args.device_args),
    )
    with completion_only_lm_head(ctx.device):
        return train_and_save(ctx, trainer, tokenizer)


def _run_plain_trainer(ctx, source: str, tokenizer, data) -> dict[str, Any]:
    from ..data.collate import MaskedCollator
    from ..data.packed_attention import use_packed_attention
    from ..data.packing import (
        PackedBlocks,
        PackedCollator,
        non_pad_fraction,
        packed_stream,
        plan_blocks,
        stream_of,
        supports_labelled_logits,
    )
    from ..data.sft_data import column

    args = ctx.args
    trainer_cls, config_cls = ctx.device.trainer("trainer")
    config = training_config(ctx, config_cls, {**args.plain_config_extra(), **_stream_arguments(data)})
    model = training_model(ctx, source)
    size = args.max_seq_length
    pad_to = size if args.pad_to_max else None
    extra: dict[str, Any] = {}
    if args.packing:
        import inspect

        if "position_ids" not in inspect.signature(model.forward).parameters:
            raise SettingError(
                f"`{ctx.name}.packing`: {type(model).__name__} takes no position_ids, so packed samples "
                f"cannot be kept apart; set `{ctx.name}.packing=false`"
            )
        eager = getattr(model.config, "_attn_implementation", "sdpa") == "eager"
        # per-sample causal attention where the model runs on transformers' attention interface and the device
        # allows it; a block-diagonal mask otherwise
        segments = ctx.device.can("per_sample_attention") and use_packed_attention(model, args.packed_attention)
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
        extra["packing"] = {
            "isolation": "per-sample causal attention" if segments else "block-diagonal mask",
            "logits": "labelled positions only" if labelled else "every position",
        }
        held = None
        if data.held is not None and data.streaming:
            held = stream_of(lambda: packed_stream(data.held, size))
        elif data.held is not None:
            held = PackedBlocks(data.held, plan_blocks(column(data.held, "length"), size))
        if data.streaming:
            train = stream_of(lambda: packed_stream(data.train, size))
            extra["packing"]["blocks"] = "packed as the stream arrives (best fit within 2,000 samples)"
        else:
            lengths = data.lengths()
            train = PackedBlocks(data.train, _packing_plan(ctx, data, lengths, size))
            micro = args.per_device_train_batch_size
            extra["packing"].update(
                samples=len(lengths),
                blocks=len(train),
                non_pad_fraction_packed=round(non_pad_fraction(train.lengths(lengths), micro, pad_to), 4),
                non_pad_fraction_unpacked=round(non_pad_fraction(lengths.tolist(), micro, pad_to), 4),
            )
            log.info(
                "[%s] packed %d samples into %d blocks of <= %d tokens: %.1f%% real tokens per batch (%.1f%% unpacked)",
                ctx.name,
                len(lengths),
                len(train),
                size,
                100 * extra["packing"]["non_pad_fraction_packed"],
                100 * extra["packing"]["non_pad_fraction_unpacked"],
            )
    else:
        train, held = _unpacked(data.train, args.group_by_length), _unpacked(data.held, False)
        collator = MaskedCollator(tokenizer.pad_token_id, pad_to)
    peft_config = build_peft_config(args.peft)
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=held,
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


def _stream_arguments(data) -> dict[str, Any]:
    """A stream is read by every process itself: accelerate's default for iterable datasets reads it on the main
    process and slices each batch's tensors along their first dimension, which would cut the packed collator's
    flat `shift_labels`."""
    return {"accelerator_config": {"dispatch_batches": False}} if data.streaming else {}


def _packing_plan(ctx, data, lengths, size: int) -> list[list[int]]:
    """The blocks of the training samples (plan_blocks), cached by what decides them (the samples' order and
    lengths, the block size): a re-run packs nothing again."""
    from ..data.packing import cached_plan

    root = Path(ctx.recipe.output_root).expanduser() / "cache" / "packing"
    return cached_plan(root, {"samples": data.key, "block_size": size}, lengths, size)


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
