"""SFT: TRL's SFTTrainer on the dataset's rows rendered with the stage's template.

Prompt tokens are masked from the loss (``loss_on: assistant``); the adapter (or the full
weights), the tokenizer and its chat template are saved. Seq2seq models (FLAN-T5) use the HF
Seq2SeqTrainer, since TRL's SFT trainer is for decoder-only models.
"""

from __future__ import annotations

from typing import Any

from . import StageContext
from .common import StageError, check_adapter_fits, deepspeed_file, load_model, load_tokenizer, log, model_source, train_and_save, training_kwargs
from .peft_config import build_peft_config


def run(ctx: StageContext) -> dict[str, Any]:
    from datasets import Dataset

    from ..data.loading import load_rows
    from ..data.tokenize import tokenize_sft

    spec, args = ctx.spec, ctx.spec.args
    source = model_source(spec.inputs[0])
    tokenizer = load_tokenizer(spec, source, args["template"])
    rows, data_source = load_rows(ctx.stage.dataset, "sft")
    if spec.model["architecture"] == "seq2seq":
        return _run_seq2seq(ctx, source, tokenizer, rows)
    examples = tokenize_sft(rows, tokenizer, args["template"], args["max_seq_length"], args["max_prompt_length"], args["loss_on"])
    log.info("[%s] %d training samples from %s (%d tokens)", spec.name, len(examples), data_source,
             sum(len(e["input_ids"]) for e in examples))
    model = load_model(spec, source, args["precision"])
    check_adapter_fits(spec, model)
    if spec.peft and spec.peft["method"] in PLAIN_TRAINER_METHODS:
        return _run_plain_trainer(ctx, model, tokenizer, examples)
    dataset = Dataset.from_list(examples)
    trainer_cls, config_cls = ctx.backend.sft_classes()
    config = config_cls(**training_kwargs(args, str(ctx.checkpoints), ctx.backend, config_cls, dict(
        max_length=args["max_seq_length"],
        packing=args["packing"],
        # ITREX --dataset_concatenation: concatenate and cut into max_length blocks. (TRL's default
        # best-fit packing resets position ids per sample, which does not isolate samples with
        # sdpa/eager attention, i.e. on CPU, Gaudi and XPU.)
        packing_strategy="wrapped",
        group_by_length=args["group_by_length"],
        dataset_num_proc=None,
        deepspeed=deepspeed_file(ctx),
        include_num_input_tokens_seen=True,
    )))
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=build_peft_config(spec.peft),
        **ctx.backend.trainer_kwargs(args),
    )
    return train_and_save(ctx, trainer, tokenizer)


# TRL's SFTTrainer computes the loss through a fused LM head patched onto the base model, which
# PEFT's adaption-prompt wrapper (LLaMA-Adapter) bypasses; those adapters train with the HF Trainer.
PLAIN_TRAINER_METHODS = {"llama_adapter"}


def _run_plain_trainer(ctx: StageContext, model, tokenizer, examples) -> dict[str, Any]:
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    spec, args = ctx.spec, ctx.spec.args
    if args["packing"]:
        raise StageError(f"`{spec.name}.packing`: not supported with {spec.peft['method']}; set `{spec.name}.packing=false`")
    rows = [{"input_ids": e["input_ids"], "attention_mask": [1] * len(e["input_ids"]),
             "labels": [t if m else -100 for t, m in zip(e["input_ids"], e["assistant_masks"])]} for e in examples]
    model = get_peft_model(model, build_peft_config(spec.peft))
    config = TrainingArguments(**training_kwargs(args, str(ctx.checkpoints), ctx.backend, TrainingArguments, dict(
        group_by_length=args["group_by_length"], deepspeed=deepspeed_file(ctx), include_num_input_tokens_seen=True)))
    trainer = Trainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100))
    return train_and_save(ctx, trainer, tokenizer)


def _run_seq2seq(ctx: StageContext, source: str, tokenizer, rows) -> dict[str, Any]:
    """Encoder-decoder SFT (ITREX finetune_seq2seq.py): prompt -> encoder, answer -> labels."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from ..data.templates import prompt_text

    spec, args = ctx.spec, ctx.spec.args
    max_prompt = args["max_prompt_length"] or args["max_seq_length"]
    examples = []
    for row in rows:
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = prompt_text(args["template"], messages[:last], tokenizer.eos_token)
        enc = tokenizer(prompt, truncation=True, max_length=max_prompt)
        enc["labels"] = tokenizer(messages[last]["content"], truncation=True, max_length=args["max_seq_length"])["input_ids"]
        examples.append(dict(enc))
    model = load_model(spec, source, args["precision"], causal=False)
    peft_config = build_peft_config(spec.peft, seq2seq=True)
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    config = Seq2SeqTrainingArguments(**training_kwargs(args, str(ctx.checkpoints), ctx.backend, Seq2SeqTrainingArguments,
                                                        dict(deepspeed=deepspeed_file(ctx))))
    trainer = Seq2SeqTrainer(model=model, args=config, train_dataset=Dataset.from_list(examples),
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), processing_class=tokenizer)
    return train_and_save(ctx, trainer, tokenizer)
